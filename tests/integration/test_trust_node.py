"""Node faults are not checkpoint faults: a squatted port, with real supervisord and the real service."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from tests.integration.attackers import configure
from tests.integration.boot_harness import NodeFactory, node_factory, store_of

pytestmark = [pytest.mark.integration, pytest.mark.faults]
__all__ = ["node_factory"]
PORT_WAIT = 8.0


def squat(node: LocalNode) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((node.config.host, node.config.port))
    s.listen(1)
    return s


def slot_states(node: LocalNode) -> dict[str, str]:
    from appliance.store.bootstate import SlotStates

    return {slot: r.state.state.value for slot, r in SlotStates(store_of(node).storage).read_all().items()}


def test_port_squatter_is_a_node_fault_and_boot_recovers(node_factory: NodeFactory) -> None:
    """Squatter leaves during the wait: boot serves. Squatter stays: exit 65, no recovery mode, no BAD mark,
    and the next boot serves once the port is free — no technician involved."""
    node = configure(node_factory(), port_wait_s=PORT_WAIT)
    node.seed()
    node.start()
    assert node.boot()[0] == 0
    node.control().stop(node.config.service_program)

    squatter = squat(node)
    result: list[tuple[int, dict]] = []
    booting = threading.Thread(target=lambda: result.append(node.boot()))
    booting.start()
    node.wait_event("node.port_busy", timeout=60)
    squatter.close()  # leaves while the service backs off
    booting.join(120)
    code, outcome = result[0]
    assert code == 0 and outcome["serving"]["generation"] == 1, outcome
    assert not node.events("slot.marked_bad")

    node.control().stop(node.config.service_program)
    squatter = squat(node)
    try:
        started = time.monotonic()
        code, outcome = node.boot()
        assert code == 65 and outcome["recovery"] is None, outcome
        assert time.monotonic() - started >= PORT_WAIT
        assert len(node.events("node.port_busy")) == 2
        assert "node fault (port)" in outcome["failures"][-1]
        assert not (Path(node.config.run_dir) / "recovery.json").exists()
        assert slot_states(node)["A"] == "GOOD" and not node.events("slot.marked_bad")
        assert not node.events("recovery.entered")
    finally:
        squatter.close()
    code, outcome = node.boot()
    assert code == 0 and outcome["serving"]["slot"] == "A", outcome
    assert node.wait_serving(timeout=30)
