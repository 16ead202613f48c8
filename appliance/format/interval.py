"""The checkpoint interval by its economics: Young/Daly, bounded by the journal and the flash budget.

Owns: ``IntervalInputs`` (measured costs and rates), ``young_daly`` and ``choose`` (the
interval ``persist_interval: "auto"`` uses, with what bounded it and what a failure then
costs). Pure arithmetic; ``appliance.persist.interval`` measures the inputs from the event log.

First-order optimum (Young 1974; Daly 2006 to first order): with checkpoint cost C (seconds of
work the checkpoint costs) and mean time between failures M, the interval that minimises
expected waste is ``T = sqrt(2 C M)``; there the marginal cost of checkpointing more often
equals the marginal saving in work redone after a failure. Here C is the capture pause plus
the persist's duration (a persist competes with serving for the device's CPU and storage),
and "work redone" is the journal replay at boot: with the journal no acknowledged step is
lost, a failure costs the replay of the steps since the last checkpoint.

Bounds, in this order: the interval is at most what keeps the worst-case replay at boot under
``max_replay_s`` and the journal under ``journal_max_bytes`` (both safety limits), and at
least ``min_s`` and what keeps persist writes within ``flash_budget_bytes_per_day`` (a wear
budget: when it conflicts with a safety limit, the safety limit wins and ``over_budget`` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DAY = 86400.0


@dataclass(frozen=True)
class IntervalInputs:
    capture_pause_s: float  # serving paused per export (mean)
    persist_s: float  # one persist's duration (mean)
    persist_bytes: float  # bytes one persist writes (mean)
    mtbf_s: float  # mean time between interruptions (power cuts, crashes, restarts)
    steps_per_s: float  # adaptation steps per second (mean)
    replay_s_per_record: float  # boot's replay time per journal record
    record_bytes: float  # journal bytes per step
    journal_max_bytes: int
    max_replay_s: float
    flash_budget_bytes_per_day: int = 0  # 0 = no wear bound
    min_s: float = 5.0
    max_s: float = DAY


@dataclass(frozen=True)
class IntervalChoice:
    interval_s: float
    young_daly_s: float
    bound: str  # young-daly | max replay | journal cap | flash budget | minimum | maximum
    over_budget: bool  # the flash budget would need a longer interval than the safety limits allow
    expected_replay_s: float  # replay at boot after a failure at a uniformly random moment
    worst_replay_s: float  # ... just before the next persist
    expected_work_lost_s: float  # Young's expected redone work: T/2 (+ C), all of it replayed, none lost
    persist_bytes_per_day: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def young_daly(cost_s: float, mtbf_s: float) -> float:
    """``sqrt(2 C M)``: the first-order optimal checkpoint interval (seconds)."""
    if cost_s < 0 or mtbf_s <= 0:
        raise ValueError("checkpoint cost must be >= 0 and the mean time between failures > 0")
    return math.sqrt(2.0 * cost_s * mtbf_s)


def choose(i: IntervalInputs) -> IntervalChoice:
    cost = i.capture_pause_s + i.persist_s
    optimum = young_daly(cost, i.mtbf_s)
    uppers = {"maximum": i.max_s}
    if i.steps_per_s > 0 and i.replay_s_per_record > 0:
        uppers["max replay"] = i.max_replay_s / (i.steps_per_s * i.replay_s_per_record)
    if i.steps_per_s > 0 and i.record_bytes > 0:
        uppers["journal cap"] = i.journal_max_bytes / (i.steps_per_s * i.record_bytes)
    lowers = {"minimum": i.min_s}
    if i.flash_budget_bytes_per_day > 0 and i.persist_bytes > 0:
        lowers["flash budget"] = i.persist_bytes * DAY / i.flash_budget_bytes_per_day
    upper_name, upper = min(uppers.items(), key=lambda kv: kv[1])
    lower_name, lower = max(lowers.items(), key=lambda kv: kv[1])
    over_budget = lower_name == "flash budget" and lower > upper
    if optimum > upper:
        interval, bound = upper, upper_name
    elif optimum < lower <= upper:
        interval, bound = lower, lower_name
    elif optimum < lower:  # the wear budget conflicts with a safety limit: the safety limit wins
        interval, bound = upper, upper_name
    else:
        interval, bound = optimum, "young-daly"
    replay_worst = interval * i.steps_per_s * i.replay_s_per_record
    return IntervalChoice(
        interval_s=interval,
        young_daly_s=optimum,
        bound=bound,
        over_budget=over_budget,
        expected_replay_s=replay_worst / 2.0,
        worst_replay_s=replay_worst,
        expected_work_lost_s=interval / 2.0 + cost,
        persist_bytes_per_day=i.persist_bytes * DAY / interval,
    )
