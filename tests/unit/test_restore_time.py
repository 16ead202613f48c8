"""Restore-time arithmetic, the auto policy rule and the report's event reading (no clock, no probe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli.perf_commands import observed_restores
from appliance.errors import ConfigError
from appliance.events import EventLog
from appliance.format.restore_time import CheckpointShape, DeviceRates, choose_policy, estimate

pytestmark = pytest.mark.unit
GB = 1e9


def rates(read_cold: float = 2 * GB, decode: float = 1.5 * GB, gpu: bool = False) -> DeviceRates:
    return DeviceRates(cores=2, hash=1.5 * GB, read_copy=2 * GB, read_cold=read_cold, touch=2 * GB,
                       decode={"bg2+zstd-lit": decode}, gpu_decoder=gpu)  # fmt: skip


def test_cpu_bound_estimate_adds_stage_costs_and_divides_by_cores() -> None:
    shape = CheckpointShape({"bg2+zstd-lit": (int(2 * GB), int(3 * GB))})
    e = estimate(shape, rates(read_cold=100 * GB))
    # per core: read copy 2/2 + hash 2/1.5 + decode 3/1.5 + touch 3/2 = 1 + 1.333 + 2 + 1.5 s
    assert e.cpu_seconds == pytest.approx(5.8333, rel=1e-3)
    assert e.expected == pytest.approx(5.8333 / 2, rel=1e-3) and e.bound == "cpu"
    assert e.worst == pytest.approx(e.expected + 2 / 100, rel=1e-3)


def test_storage_bound_estimate_and_zero_copy_pays_only_the_hash() -> None:
    raw = int(3 * GB)
    mapped = estimate(CheckpointShape({"id": (raw, raw)}, mapped_raw=raw), rates(read_cold=1 * GB))
    assert mapped.cpu_seconds == pytest.approx(2.0) and mapped.bound == "storage" and mapped.expected == 3.0
    private = estimate(CheckpointShape({"id": (raw, raw)}), rates(read_cold=1 * GB))
    assert private.cpu_seconds == pytest.approx(2.0 + 1.5 + 1.5)


def test_auto_prefers_fast_on_fast_storage_and_compact_on_slow_storage_or_with_a_gpu() -> None:
    assert choose_policy(rates(read_cold=5 * GB), 1 / 1.49) == "fast"
    assert choose_policy(rates(read_cold=0.3 * GB), 1 / 1.49) == "compact"
    assert choose_policy(rates(read_cold=0.3 * GB, gpu=True), 1 / 1.49) == "compact"


def test_device_profile_round_trips_and_refuses_nonsense() -> None:
    r = rates()
    assert DeviceRates.from_dict(r.to_dict()) == r
    with pytest.raises(ConfigError):
        DeviceRates.from_dict(r.to_dict() | {"hash": 0})
    with pytest.raises(ConfigError):
        DeviceRates.from_dict({"cores": 2})


def test_observed_restores_reads_restore_events_newest_first_and_skips_torn_lines(tmp_path: Path) -> None:
    """The records as ``EventLog`` writes them: the event's data under ``fields`` (trial 4, N5)."""
    log = tmp_path / "events.jsonl"
    events = EventLog(log, "service", journal=None)
    events.emit("boot.started", boot_id="b1", floor=0)
    first = events.emit("restore.finished", slot="A", generation=3, raw_bytes=10, seconds=1.5, stats={})
    events.emit("restore.finished", slot="B", generation=4, raw_bytes=10, seconds=2.5, stats={})
    with open(log, "a", encoding="utf-8") as f:  # planted: data at the top level, fields not an object; torn
        f.write(json.dumps({"event": "restore.finished", "ts": "x", "seconds": 9.0}) + "\n")
        f.write(json.dumps({"event": "restore.finished", "ts": "y", "fields": [1]}) + "\n")
        f.write('{"event": "restore.fin')
    got = observed_restores(log)
    assert [(o["slot"], o["generation"], o["seconds"]) for o in got] == [("B", 4, 2.5), ("A", 3, 1.5)]
    assert got[1]["ts"] == first["ts"] and got[1]["raw_bytes"] == 10
    assert observed_restores(tmp_path / "absent.jsonl") == []
    assert observed_restores(tmp_path) == []  # a directory: no observation, never a failure
