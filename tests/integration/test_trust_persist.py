"""Persistence never stops silently and never signs what it should not: the real service runtime and its
real control channel on RUN/control.sock, driven in process by the real persistence watchdog."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from appliance.events import EventLog, read_events
from appliance.format.handoff import Admit
from appliance.node.config import NodeConfig
from appliance.persist.committer import Committer
from appliance.persist.daemon import PersistDaemon
from appliance.service.control import ControlServer
from appliance.service.runtime import ServiceRuntime
from appliance.store.store import Store
from tests.integration.node_fixtures import node, serving_good

pytestmark = [pytest.mark.integration, pytest.mark.faults]
__all__ = ["node"]
X = [[0.25] * 16]


@contextlib.contextmanager
def service(config: NodeConfig) -> Iterator[ServiceRuntime]:
    runtime = ServiceRuntime(config)
    runtime.bring_up()
    server = ControlServer(runtime)
    server.start()
    try:
        yield runtime
    finally:
        server.stop()


def watchdog(config: NodeConfig) -> PersistDaemon:
    events = EventLog(config.event_log, "persist")
    return PersistDaemon(Committer(config, events), events)


def failures(config: NodeConfig) -> list[dict]:
    return [e["fields"] for e in read_events(config.event_log, frozenset({"persist.failed"}))]


def test_failed_scheduled_persist_emits_event_and_retries(node: NodeConfig) -> None:
    """A NaN in the served state: every scheduled export fails loudly, backs off, and recovers once fixed."""
    serving_good(node)
    with service(node) as runtime:
        assert runtime.model is not None
        runtime.adapt(X, [[1.0, 0.0, -1.0, 0.5]])
        with torch.no_grad():
            runtime.model.head.bias[0] = float("nan")  # what a NaN target used to do to the state
        daemon = watchdog(node)
        assert daemon.request_export() is False
        assert daemon.request_export() is False
        first, second = failures(node)[-2:]
        assert first["file"] == "(scheduled export)" and "not finite" in first["problem"]
        assert (first["attempt"], second["attempt"]) == (1, 2) and second["retry_in_s"] == 2 * first["retry_in_s"]
        assert not list(Path(node.outbox).glob("export-*"))  # nothing non-finite was written
        with torch.no_grad():
            runtime.model.head.bias[0] = 0.0
        assert daemon.request_export() is True and daemon.export_backoff.failures == 0
        assert daemon.process() is not None  # authenticated by the service's receipt, committed
    assert [e["generation"] for e in Store.open(node.store).log()] == [2, 1]


def test_unreachable_service_is_a_persist_failure_not_silence(node: NodeConfig) -> None:
    """With a GOOD checkpoint handed off but no service answering, each scheduled export is an event."""
    serving_good(node)
    daemon = watchdog(node)
    assert daemon.request_export() is False
    assert failures(node)[-1]["error"] == "ControlChannelError"


def test_replayed_export_of_an_earlier_service_process_is_quarantined(node: NodeConfig) -> None:
    """Receipts live in the service process: after a restart it vouches for nothing it did not write."""
    serving_good(node)
    with service(node) as runtime:
        runtime.adapt(X, [[1.0, 0.0, -1.0, 0.5]])
        written = runtime.export()
    with service(node):  # the restarted service (supervisord after a crash)
        daemon = watchdog(node)
        assert daemon.process() is None
    rejected = read_events(node.event_log, frozenset({"outbox.rejected"}))[-1]["fields"]
    assert rejected["file"] == written["file"] and rejected["error"] == "UnauthenticExportError"
    assert [e["generation"] for e in Store.open(node.store).log()] == [1]


def test_export_equal_to_its_parent_is_not_committed_again(node: NodeConfig) -> None:
    """Tensors equal to the newest checkpoint's: removed with persist.unchanged, no empty generation."""
    serving_good(node)
    with service(node) as runtime:
        assert runtime.model is not None
        original = {k: v.clone() for k, v in runtime.model.state_dict().items()}
        runtime.adapt(X, [[1.0, 0.0, -1.0, 0.5]])
        with torch.no_grad():  # adapted, then back to exactly the restored state
            for name, tensor in runtime.model.state_dict().items():
                tensor.copy_(original[name])
        written = runtime.export()
        assert watchdog(node).process() is None
    unchanged = read_events(node.event_log, frozenset({"persist.unchanged"}))[-1]["fields"]
    assert unchanged == {"file": written["file"], "generation": 1}
    assert not (Path(node.outbox) / written["file"]).exists()
    assert [e["generation"] for e in Store.open(node.store).log()] == [1]


def test_export_from_a_service_restored_from_another_checkpoint_is_quarantined(node: NodeConfig) -> None:
    """Provenance: a receipt for a state derived from something other than the current handoff is refused."""
    serving_good(node)
    with service(node) as runtime:
        runtime.adapt(X, [[1.0, 0.0, -1.0, 0.5]])
        runtime.export()
        from tests.integration.node_fixtures import handoff

        handoff(node, Admit.SELF, digest="ab" * 32)  # boot has since handed off something else
        assert watchdog(node).process() is None
    rejected = read_events(node.event_log, frozenset({"outbox.rejected"}))[-1]["fields"]
    assert rejected["error"] == "UnauthenticExportError" and "boot" in rejected["problem"]
