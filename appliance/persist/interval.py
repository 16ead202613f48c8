"""Measuring what ``persist_interval: "auto"`` needs from the event log, and the interval it gives.

Owns: ``measure`` (the inputs of ``appliance.format.interval.choose`` from the node's own
events: capture pauses and step counts of ``state.exported``, durations and bytes of
``persist.committed``, replay time per record of ``journal.replayed``, interruptions as
``boot.started`` after the first plus ``service.crashed``, over the span the log covers) and
``persist_interval`` (the seconds the watchdog waits; the fixed ``persist_interval`` unless
node.json says "auto"). Too few observations fall back to stated priors, never to zero.
"""

from __future__ import annotations

from statistics import fmean
from typing import Any

from appliance.events import event_fields, read_events
from appliance.format.interval import IntervalChoice, IntervalInputs, choose
from appliance.node.config import NodeConfig

PRIOR_MTBF_S = 7 * 86400.0  # one interruption a week until the log shows otherwise
PRIOR_REPLAY_S_PER_RECORD = 0.005  # the demo model's replay on the 2-core dev machine, rounded up
PRIOR_RECORD_BYTES = 1024.0
MIN_SPAN_S = 3600.0
WINDOW = 50  # newest events of each kind that count
NAMES = frozenset({"state.exported", "persist.committed", "journal.replayed", "boot.started", "service.crashed"})


def measure(config: NodeConfig) -> tuple[IntervalInputs, dict[str, Any]]:
    """The inputs, and where each came from (``measured`` or ``prior``) for the report."""
    events = read_events(config.event_log, NAMES)
    by: dict[str, list[dict[str, Any]]] = {n: [] for n in NAMES}
    for e in events:
        fields = dict(event_fields(e))
        fields["_t"] = e.get("ts_unix")
        by[e["event"]].append(fields)
    source: dict[str, Any] = {}
    exported = by["state.exported"][-WINDOW:]
    committed = by["persist.committed"][-WINDOW:]
    replayed = [f for f in by["journal.replayed"][-WINDOW:] if _num(f.get("records")) > 0]
    pause = _mean(exported, "pause_s", 0.0, "capture_pause_s", source)
    persist_s = _mean(committed, "seconds", 0.0, "persist_s", source)
    persist_bytes = _mean(committed, "written_bytes", 0.0, "persist_bytes", source)
    steps = _rate(exported)
    source["steps_per_s"] = "measured" if steps is not None else "prior"
    replay = fmean(_num(f.get("seconds")) / _num(f.get("records")) for f in replayed) if replayed else None
    source["replay_s_per_record"] = "measured" if replay is not None else "prior"
    record_bytes = fmean(_num(f.get("bytes")) / _num(f.get("records")) for f in replayed if _num(f.get("bytes")))\
        if any(_num(f.get("bytes")) for f in replayed) else None  # fmt: skip
    source["record_bytes"] = "measured" if record_bytes is not None else "prior"
    mtbf = _mtbf(events, by)
    source["mtbf_s"] = "measured" if mtbf is not None else "prior"
    inputs = IntervalInputs(
        capture_pause_s=pause, persist_s=persist_s, persist_bytes=persist_bytes,
        mtbf_s=mtbf if mtbf is not None else PRIOR_MTBF_S,
        steps_per_s=steps if steps is not None else 0.0,
        replay_s_per_record=replay if replay is not None else PRIOR_REPLAY_S_PER_RECORD,
        record_bytes=record_bytes if record_bytes is not None else PRIOR_RECORD_BYTES,
        journal_max_bytes=config.journal_max_bytes, max_replay_s=config.max_replay_s,
        flash_budget_bytes_per_day=config.flash_budget_bytes_per_day,
    )  # fmt: skip
    return inputs, source


def persist_interval(config: NodeConfig) -> float:
    """Seconds between scheduled exports: the fixed value, or the economic one for "auto"."""
    if not config.persist_auto:
        return config.persist_interval
    choice, _, source = chosen(config)
    if source["persist_s"] != "measured":  # no persist observed yet: its cost is unknown, keep the fixed value
        return config.persist_interval
    return choice.interval_s


def chosen(config: NodeConfig) -> tuple[IntervalChoice, IntervalInputs, dict[str, Any]]:
    inputs, source = measure(config)
    return choose(inputs), inputs, source


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def _mean(rows: list[dict[str, Any]], key: str, prior: float, name: str, source: dict[str, Any]) -> float:
    values = [_num(r.get(key)) for r in rows if key in r]
    source[name] = "measured" if values else "prior"
    return fmean(values) if values else prior


def _rate(exported: list[dict[str, Any]]) -> float | None:
    """Adaptation steps per second between the first and last export in the window."""
    points = [(_num(r.get("_t")), _num(r.get("step"))) for r in exported if r.get("_t")]
    if len(points) < 2 or points[-1][0] <= points[0][0] or points[-1][1] < points[0][1]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def _mtbf(events: list[dict[str, Any]], by: dict[str, list[dict[str, Any]]]) -> float | None:
    times = [_num(e.get("ts_unix")) for e in events if e.get("ts_unix")]
    interruptions = max(0, len(by["boot.started"]) - 1) + len(by["service.crashed"])
    if not times or interruptions == 0:
        return None
    return max(max(times) - min(times), MIN_SPAN_S) / interruptions
