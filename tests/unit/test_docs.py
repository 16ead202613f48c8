"""The README's exit-code table is the contract: it must list every error class with its code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.errors import all_error_classes

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_error_with_its_exit_code() -> None:
    table = dict(re.findall(r"^\| (\d+) \| `(\w+)`", README.read_text(), flags=re.MULTILINE))
    documented = {name: int(code) for code, name in table.items()}
    for cls in all_error_classes():
        if cls.__name__ in {"ApplianceError", "UserError"}:
            continue
        assert documented.get(cls.__name__) == cls.exit_code, f"{cls.__name__} ({cls.exit_code}) not in README"
