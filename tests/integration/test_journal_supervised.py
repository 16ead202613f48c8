"""The README demo's third part as a test: real supervisord, boot and service, kill -9 of the whole tree.

After the cut nothing had been persisted since the boot; the second boot restores generation 1,
the service replays the journal before the canary and admission, and the next adaptation step
continues the counter exactly (``appliance.cli.demo_journal``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli.demo_journal import run_journal_demo

pytestmark = pytest.mark.integration


def test_power_cut_of_the_whole_tree_loses_no_acknowledged_step(tmp_path: Path) -> None:
    assert run_journal_demo(tmp_path)
