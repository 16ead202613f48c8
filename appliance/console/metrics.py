"""Prometheus metrics of the node, computed at scrape time from the event log and slot states.

Owns: ``NodeCollector`` (a ``prometheus_client`` custom collector) and ``render`` (the text
exposition). Metric names follow Prometheus conventions (``appliance_`` prefix, base units,
``_total`` counters). Sources: the ``boot.serving`` event (restore seconds per stage),
``state.exported`` (persist pause), ``persist.committed`` (duration, commits),
``fallback.taken`` (fallbacks), slot ``state.json`` files (slot states), ``scrub.json``
(scrub progress) and, with ``--remote REMOTE.json``, the replicator's queue (replication lag).
Does not own serving HTTP (``app``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.errors import ApplianceError, StorageError
from appliance.events import event_fields, read_events
from appliance.node.config import NodeConfig
from appliance.node.identity import open_node_store

_NAMES = frozenset({"boot.serving", "state.exported", "persist.committed", "fallback.taken", "persist.failed",
                    "console.login_failed"})  # fmt: skip
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeCollector(Collector):
    def __init__(self, config: NodeConfig, remote: Path | None = None) -> None:
        self.config = config
        self.remote = remote

    def collect(self) -> Iterator[Any]:
        events = read_events(self.config.event_log, _NAMES)
        yield from self._boot(events)
        yield from self._persist(events)
        yield from self._slots()
        if self.remote is not None:
            yield from self._replication(self.remote)

    def _replication(self, remote: Path) -> Iterator[Any]:
        """From the replicator's durable queue (``STATE_DIR/replication.json``); read-only."""
        lag = GaugeMetricFamily("appliance_replication_lag_generations",
                                "Committed generations newer than the one replicated to the remote")  # fmt: skip
        done = GaugeMetricFamily("appliance_replication_replicated_generation", "Newest generation on the remote")
        uploads = CounterMetricFamily("appliance_replication_uploads", "Checkpoints replicated (head published)")
        failures = CounterMetricFamily("appliance_replication_failures", "Failed replication attempts")
        try:
            from appliance.remote.config import load_remote
            from appliance.remote.state import STATE_FILE, ReplicationState
            from appliance.store.discovery import scan

            cfg = load_remote(remote)
            state = ReplicationState.from_dict(json.loads((Path(cfg.state_dir) / STATE_FILE).read_text()))
            store = open_node_store(self.config)
            newest = max((r.generation for r in scan(store.storage, store.limits).records if r.record), default=0)
            replicated = state.replicated.generation if state.replicated else 0
            lag.add_metric([], float(max(0, newest - replicated)))
            done.add_metric([], float(replicated))
            uploads.add_metric([], float(state.uploads))
            failures.add_metric([], float(state.failures))
        except (ApplianceError, StorageError, OSError, ValueError, TypeError):
            pass  # no replicator state yet: the series are absent
        yield from (lag, done, uploads, failures)

    def _boot(self, events: list[dict[str, Any]]) -> Iterator[Any]:
        stages = GaugeMetricFamily(
            "appliance_restore_stage_seconds", "Seconds per stage of the last boot to serving", labels=["stage"]
        )
        served = [e for e in events if e["event"] == "boot.serving"]
        if served:
            stages_of = event_fields(served[-1]).get("stages")
            for stage, seconds in (stages_of if isinstance(stages_of, dict) else {}).items():
                if isinstance(seconds, int | float):
                    stages.add_metric([stage.removesuffix("_s")], float(seconds))
        yield stages
        yield _counter("appliance_fallbacks", "Fallbacks taken by boot", events, "fallback.taken")
        yield _counter("appliance_console_login_failures", "Failed console logins", events, "console.login_failed")

    def _persist(self, events: list[dict[str, Any]]) -> Iterator[Any]:
        yield _counter("appliance_commits", "Generations committed by the persistence watchdog", events,
                       "persist.committed")  # fmt: skip
        yield _counter("appliance_persist_failures", "Failed persists", events, "persist.failed")
        yield _last_gauge("appliance_persist_duration_seconds", "Duration of the last persist commit", events,
                          "persist.committed", "seconds")  # fmt: skip
        yield _last_gauge("appliance_persist_pause_seconds", "Serving pause of the last state export", events,
                          "state.exported", "pause_s")  # fmt: skip

    def _slots(self) -> Iterator[Any]:
        states = GaugeMetricFamily("appliance_slot_state", "1 for the state each slot is in", labels=["slot", "state"])
        frames_left = GaugeMetricFamily("appliance_scrub_passes_completed", "Completed scrub passes")
        marked = GaugeMetricFamily("appliance_scrub_marked_frames", "Frames damaged in both slots (marked)")
        try:
            from appliance.store.bootstate import SlotStates
            from appliance.store.scrub import load_cursor

            store = open_node_store(self.config)
            for slot, reading in SlotStates(store.storage, store.limits).read_all().items():
                for name in ("UNKNOWN", "GOOD", "BAD"):
                    states.add_metric([slot, name], 1.0 if reading.state.state.value == name else 0.0)
            cursor, _ = load_cursor(store.storage, store.limits)
            frames_left.add_metric([], float(cursor.passes_completed))
            marked.add_metric([], float(len(cursor.marked)))
        except (ApplianceError, StorageError, OSError):
            pass  # an unreadable store shows as missing series; the pages say why
        yield states
        yield frames_left
        yield marked


def _counter(name: str, doc: str, events: list[dict[str, Any]], event: str) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], float(sum(1 for e in events if e["event"] == event)))
    return c


def _last_gauge(name: str, doc: str, events: list[dict[str, Any]], event: str, field: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    found = [
        f[field] for e in events if e["event"] == event and isinstance((f := event_fields(e)).get(field), int | float)
    ]
    if found:
        g.add_metric([], float(found[-1]))
    return g


def render(config: NodeConfig, remote: Path | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(config, remote))
    return bytes(generate_latest(registry))
