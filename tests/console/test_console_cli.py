"""CLI parity: every console action is an ``appliance tech`` verb with --json and the same refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from appliance.events import read_events
from appliance.format import slotstate as ss
from appliance.node.floor import open_floor
from appliance.storage import LocalStorage
from appliance.store.bootstate import SlotStates
from tests.console.conftest import Node

pytestmark = pytest.mark.integration


def tech(node: Node, *args: str) -> tuple[int, dict[str, object]]:
    cmd = [sys.executable, "-m", "appliance.cli.main", "tech", *args, "--config", str(node.config_path),
           "--technician", "carol", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_slot_reset_of_a_slot_that_is_not_bad_is_refused_with_exit_83(node: Node) -> None:
    code, doc = tech(node, "slot-reset", "A")
    assert code == 83 and doc["error"] == "ActionRefusedError" and "not marked BAD" in str(doc["problem"])


def test_slot_reset_clears_a_bad_mark_and_logs_the_technician(node: Node) -> None:
    states = SlotStates(LocalStorage(node.config.store))
    states.write(ss.mark_bad(states.load("B"), 2, None, "canary failed", "2026-01-01T00:00:00Z"))  # type: ignore[arg-type]
    code, doc = tech(node, "slot-reset", "B")
    assert code == 0 and states.load("B").state is ss.BootState.UNKNOWN
    event = read_events(node.config.event_log, frozenset({"console.action"}))[-1]
    assert {"technician": "carol", "action": "slot-reset", "slot": "B"}.items() <= event["fields"].items()


def test_rollback_below_the_floor_is_refused_and_commits_nothing(node: Node) -> None:
    open_floor(node.config).raise_to(3)
    code, doc = tech(node, "rollback", "2", "--no-restart")
    assert code == 83 and "below the anti-rollback floor 3" in str(doc["problem"])
    code, doc = tech(node, "verify")
    assert code == 0 and sorted(c["generation"] for c in doc["checkpoints"]) == [1, 2, 3]  # type: ignore[attr-defined]


def test_rollback_recommits_the_old_content_bit_exactly(node: Node, tmp_path: object) -> None:
    import torch

    from appliance import api
    from appliance.store.store import Store

    code, doc = tech(node, "rollback", "2", "--no-restart")
    assert code == 0, doc
    assert doc["committed"]["generation"] == 4  # type: ignore[index]
    store = Store.open(node.config.store)
    old, new = api.load(store, generation=2), api.load(store, generation=4)
    assert old.tensors.keys() == new.tensors.keys()
    assert all(torch.equal(old.tensors[k], new.tensors[k]) for k in old.tensors)
    assert new.metadata["rolled_back_from"] == 2


def test_console_passwd_and_fingerprint(node: Node) -> None:
    cmd = [sys.executable, "-m", "appliance.cli.main", "console", "passwd", "dave", "--password-stdin",
           "--config", str(node.config_path), "--json"]  # fmt: skip
    proc = subprocess.run(
        cmd, input="a long enough password\n", capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((node.state_dir / "technicians.json").read_text())
    assert data["technicians"]["dave"]["hash"].startswith("$argon2id$")
    assert (node.state_dir / "technicians.json").stat().st_mode & 0o777 == 0o600
    cmd = [sys.executable, "-m", "appliance.cli.main", "console", "fingerprint", "--create", "--config",
           str(node.config_path), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    fp = json.loads(proc.stdout)["fingerprint"]
    assert fp.startswith("SHA256:") and len(fp.split(":")) == 33
    assert (node.state_dir / "tls" / "console.key").stat().st_mode & 0o777 == 0o600
