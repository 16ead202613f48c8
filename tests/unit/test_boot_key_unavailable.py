"""Boot on an encrypted store whose key cannot be obtained: a node fault, never a slot mark (design §14.7)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from appliance.crypto import FileKek
from appliance.format import slotstate as ss
from appliance.format.handoff import KEY_FAULT, Phase, ServiceReport
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.unit.test_boot_sequence import Node

pytestmark = [pytest.mark.unit, pytest.mark.faults]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path / "plain")
    kek = FileKek.create(tmp_path / "store.kek")
    config = StoreConfig(model="m", frame_size=4096, encrypt=True)
    n.store = Store.init(tmp_path / "enc", [n.key.public], config, kek=kek)
    n.config = replace(n.config, store=str(tmp_path / "enc"))
    from appliance.store.bootstate import SlotStates

    n.states = SlotStates(n.store.storage)
    n.kek_path = kek.path  # type: ignore[attr-defined]
    return n


def test_a_sealed_store_boots_when_its_key_is_there(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    outcome = node.boot()
    assert outcome.serving is not None and outcome.serving["generation"] == 2


@pytest.mark.parametrize("fault", ["missing", "wrong"])
def test_an_unobtainable_key_enters_recovery_key_unavailable_and_marks_nothing(
    node: Node, tmp_path: Path, fault: str
) -> None:
    node.commit(1)
    node.commit(2)
    kek: Path = node.kek_path  # type: ignore[attr-defined]
    kek.unlink()
    if fault == "wrong":
        FileKek.create(kek)
    node.store = Store.open(node.config.store)  # a fresh process: nothing cached
    from appliance.store.bootstate import SlotStates

    node.states = SlotStates(node.store.storage)
    outcome = node.boot()
    assert outcome.serving is None and outcome.recovery == "key unavailable"
    assert outcome.exit_code == (55 if fault == "missing" else 56)
    assert node.service.started == []  # no trial: nothing restored, nothing blamed
    for slot in "AB":
        state = node.slot(slot)
        assert state.state is not ss.BootState.BAD and state.attempts == 0
    recovery = node.run.read_recovery()
    assert recovery is not None and recovery["reason"] == "key unavailable"


def test_a_service_that_cannot_get_the_key_is_a_node_fault_too(node: Node) -> None:
    """The service runs as another user: its own key failure (node_fault "key") blames no checkpoint."""
    node.commit(1)
    node.commit(2)

    def start(name: str) -> None:
        h = node.run.read_handoff()
        node.service.pid += 1
        node.service.started.append((h.slot, h.generation))
        node.service.state = "EXITED"
        error = {"error": "KeyUnavailableError", "problem": "KEK file unreadable", "phase": "restoring",
                 "exit_code": 55, "node_fault": KEY_FAULT}  # fmt: skip
        node.run.write_report(ServiceReport(node.service.pid, Phase.FAILED, h, "t", error=error))

    node.service.start = start  # type: ignore[method-assign]
    outcome = node.boot()
    assert outcome.recovery == "key unavailable" and outcome.exit_code == 55
    assert node.service.started == [("B", 2)]  # tried once, then recovery: no fallback to an older slot
    assert node.slot("B").state is not ss.BootState.BAD and node.slot("B").attempts == 0
