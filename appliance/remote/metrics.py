"""Prometheus metrics of the replicate program, written as a textfile in its state directory.

Owns: ``ReplicateMetrics`` (a ``prometheus_client`` registry per replicate process: counters and
gauges computed from the durable queue, so they survive restarts and power cuts, and the upload
duration histogram of this process), ``METRICS_FILE`` and ``read_metrics`` (the samples, for
``appliance remote status --json``).

Exposure (docs/design.md §11.4): no listener. After every pass whose numbers changed the program
writes ``STATE_DIR/metrics.prom`` (temp -> rename, mode 0640) in the text exposition format, the
node_exporter *textfile collector* convention; a metrics agent in the state directory's group
reads it. The replicator holds the bucket credentials and the head key, so it opens no port and no
socket that another process could talk to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from appliance.remote.state import ReplicationState

METRICS_FILE = "metrics.prom"
_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))


class _QueueCollector(Collector):
    def __init__(self) -> None:
        self.state: ReplicationState | None = None
        self.newest: int | None = None

    def collect(self) -> Iterator[Any]:
        s = self.state
        if s is None:
            return
        for name, doc, value in (
            ("appliance_replicate_uploads", "Checkpoints replicated (head published)", s.uploads),
            ("appliance_replicate_bytes", "Bytes uploaded (blobs, bundles, heads)", s.bytes_uploaded),
            ("appliance_replicate_blobs_uploaded", "Blobs uploaded", s.blobs_uploaded),
            ("appliance_replicate_blobs_skipped", "Blobs already in the bucket", s.blobs_skipped),
            ("appliance_replicate_failures", "Failed replication attempts", s.failures),
            ("appliance_replicate_retries", "Attempts made after a failed one", s.retries),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c
        done = s.replicated.generation if s.replicated is not None else 0
        depth = GaugeMetricFamily("appliance_replicate_queue_depth",
                                  "Checkpoints waiting for upload (0 or 1: only the newest is uploaded)")  # fmt: skip
        depth.add_metric([], float(s.pending(self.newest) is not None))
        yield depth
        gauges = (
            ("appliance_replicate_replicated_generation", "Newest generation on the remote", float(done)),
            ("appliance_replicate_attempts", "Consecutive failed attempts of the pending upload", float(s.attempts)),
            ("appliance_replicate_last_success_timestamp_seconds", "When the last head was published (unix time)",
             s.last_success_at),
            ("appliance_replicate_next_attempt_timestamp_seconds", "When the next retry is due (unix time)",
             s.next_attempt_at),
        )  # fmt: skip
        for name, doc, gvalue in gauges:
            if gvalue is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(gvalue))
                yield g


class ReplicateMetrics:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / METRICS_FILE
        self.registry = CollectorRegistry(auto_describe=False)
        self.duration = Histogram("appliance_replicate_upload_duration_seconds",
                                  "Time to upload one checkpoint (blobs, bundle, head), successful uploads of this "
                                  "process", buckets=_BUCKETS, registry=self.registry)  # fmt: skip
        self._queue = _QueueCollector()
        self.registry.register(self._queue)
        self._written: bytes | None = None

    def update(self, state: ReplicationState, newest: int | None) -> None:
        self._queue.state, self._queue.newest = state, newest

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def write(self) -> bool:
        """Write the textfile if its content changed (no wear on idle passes). False when unwritable."""
        data = self.render()
        if data == self._written:
            return True
        tmp = self.path.with_name(f".{METRICS_FILE}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            tmp.replace(self.path)
        except OSError:
            return False  # metrics never stop replication
        self._written = data
        return True


def _label(labels: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else ""


def _samples(text: str) -> dict[str, float]:
    return {
        s.name + _label(s.labels): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def read_metrics(state_dir: Path, state: ReplicationState, newest: int | None) -> dict[str, float]:
    """``{sample: value}`` of ``STATE_DIR/metrics.prom``; derived from the queue when the file is absent."""
    try:
        return _samples((state_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        derived = ReplicateMetrics(state_dir)
        derived.update(state, newest)
        return {k: v for k, v in _samples(derived.render().decode()).items() if "_duration_" not in k}
