"""Persistence while serving, with real supervisord: deltas, requests under load, power cut mid-persist."""

from __future__ import annotations

import threading
import time

import pytest

from appliance.cli.localnode import LocalNode
from tests.integration.boot_harness import NodeFactory, node_factory, store_of

pytestmark = pytest.mark.integration
__all__ = ["node_factory"]
MEDIUM = "tests.integration.fixture_models:medium"
X = [[0.1 * i for i in range(16)]]


def serving(node: LocalNode) -> dict:
    node.start()
    code, outcome = node.boot()
    assert code == 0, outcome
    return outcome


def adapt_and_persist(node: LocalNode, times: int) -> list[dict]:
    committed = []
    for _ in range(times):
        assert node.control_call("/v1/adapt", {"inputs": X, "targets": [[1.0, 0.0, -1.0, 0.5]]})[0] == 200
        before = len(node.events("persist.committed"))
        status, exported = node.control_call("/v1/export", {})
        assert status == 200 and exported["pause_s"] >= 0
        committed.append(node.wait_event("persist.committed", after=before, timeout=120)["fields"])
    return committed


def newest_committed(node: LocalNode) -> int:
    return max(e["generation"] for e in store_of(node).log() if "error" not in e)


def test_deltas_go_to_the_slot_without_the_newest_good_state(node_factory: NodeFactory) -> None:
    """While A serves GOOD, every persisted delta lands in B and re-uses the unchanged backbone frames."""
    node = node_factory()
    node.seed()
    serving(node)
    commits = adapt_and_persist(node, 3)
    assert [c["slot"] for c in commits] == ["B", "B", "B"]
    assert [c["generation"] for c in commits] == [2, 3, 4]
    # the first commit into B copies every frame; later ones write only the adapted head and its moments
    assert commits[-1]["written_bytes"] * 10 < commits[0]["written_bytes"]
    assert commits[-1]["frames"]["reused"] > commits[-1]["frames"]["full"] + commits[-1]["frames"]["delta"]
    steps = [c["step"] for c in commits]
    assert steps == sorted(steps) and steps[0] == 1
    exported = node.events("state.exported")
    assert len(exported) == 3 and all(e["fields"]["pause_s"] < 60 for e in exported)


def test_persist_under_load_keeps_answering_requests(node_factory: NodeFactory) -> None:
    """Requests keep being answered while a state export is committed (serving pauses only for the capture)."""
    node = node_factory(model=MEDIUM)
    node.seed()
    serving(node)
    done: list[tuple[float, int]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, _ = node.call("/v1/infer", {"inputs": X}, timeout=30)
            done.append((time.time(), status))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        commits = adapt_and_persist(node, 1)  # first commit into B copies every frame: the longest persist
    finally:
        stop.set()
        worker.join(60)
    started = node.events("persist.started")[-1]["ts_unix"]
    finished = node.events("persist.committed")[-1]["ts_unix"]
    assert commits[0]["generation"] == 2
    assert all(status == 200 for _, status in done)
    during = [t for t, _ in done if started <= t <= finished]
    assert during, f"no request completed during the {finished - started:.3f}s persist"


def test_kill_9_during_persist_then_boot_returns_the_last_committed_generation(node_factory: NodeFactory) -> None:
    """A power cut in the middle of a persist loses at most that export; boot serves the newest commit."""
    node = node_factory(model=MEDIUM)
    node.seed()
    serving(node)
    acknowledged = adapt_and_persist(node, 2)[-1]["generation"]  # generations 2 and 3 in B
    assert node.control_call("/v1/adapt", {"inputs": X, "targets": [[0.0, 1.0, 0.0, 1.0]]})[0] == 200
    started = len(node.events("persist.started"))
    threading.Thread(target=node.control_call, args=("/v1/export", {}), kwargs={"timeout": 120}, daemon=True).start()
    node.wait_event("persist.started", after=started, timeout=120)
    node.power_cut()
    newest = newest_committed(node)
    assert newest >= acknowledged
    assert store_of(node).verify().all_ok  # the cut left no damaged commit, only ignorable leftovers
    assert serving(node)["serving"]["generation"] == newest
    status, body = node.call("/v1/infer", {"inputs": X})
    assert status == 200 and body["generation"] == newest
