"""What the programs started at power-on import before their work (issue 16: every CPU-second counts there)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance.cli.main import POWER_ON_COMMANDS, build_parser

pytestmark = pytest.mark.unit


def _imports(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return set(done.stdout.split())


def test_the_persistence_watchdog_never_imports_torch() -> None:
    """It reads exports and commits bytes: torch's import (1-2 CPU-s) would compete with the service's start."""
    pytest.importorskip("torch", reason="without torch installed (the Python 3.10 smoke) this would prove nothing")
    pytest.importorskip("watchdog", reason="the persistence watchdog's file events need the watchdog package")
    loaded = _imports(
        "from appliance.persist.committer import Committer\nfrom appliance.persist.daemon import PersistDaemon"
    )
    assert "torch" not in loaded and "safetensors.torch" not in loaded


def test_power_on_commands_parse_with_their_own_module_only() -> None:
    loaded = _imports(
        "from appliance.cli.main import build_parser\nbuild_parser('serve').parse_args(['serve', '--config', 'n.json'])"
    )
    assert "appliance.cli.boot_commands" in loaded
    assert not {"appliance.cli.store_commands", "appliance.console.commands", "appliance.cli.remote_commands"} & loaded


@pytest.mark.parametrize("command", sorted(POWER_ON_COMMANDS))
def test_a_power_on_command_parses_the_same_in_the_lean_and_the_whole_grammar(command: str) -> None:
    argv = [command, "--config", "/etc/appliance/node.json"]
    lean, whole = build_parser(command).parse_args(argv), build_parser().parse_args(argv)
    assert vars(lean) == vars(whole)
