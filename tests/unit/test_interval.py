"""The auto persist interval: Young/Daly against hand-computed values, and every bound."""

from __future__ import annotations

import math

import pytest

from appliance.format.interval import IntervalInputs, choose, young_daly

pytestmark = pytest.mark.unit


def _inputs(**changes: float) -> IntervalInputs:
    base = {"capture_pause_s": 0.5, "persist_s": 1.5, "persist_bytes": 4096.0, "mtbf_s": 86400.0,
            "steps_per_s": 1.0, "replay_s_per_record": 0.002, "record_bytes": 1000.0,
            "journal_max_bytes": 64 << 20, "max_replay_s": 30.0}  # fmt: skip
    return IntervalInputs(**(base | changes))  # type: ignore[arg-type]


def test_young_daly_matches_hand_computed_values() -> None:
    # sqrt(2 * 2 s * 86400 s) = sqrt(345600) = 587.8775...
    assert young_daly(2.0, 86400.0) == pytest.approx(587.877538267963, rel=1e-12)
    # sqrt(2 * 0.5 * 3600) = 60
    assert young_daly(0.5, 3600.0) == 60.0
    assert young_daly(0.0, 100.0) == 0.0
    with pytest.raises(ValueError):
        young_daly(1.0, 0.0)


def test_the_optimum_is_chosen_when_no_bound_binds() -> None:
    c = choose(_inputs())
    assert c.bound == "young-daly" and c.interval_s == pytest.approx(math.sqrt(2 * 2.0 * 86400))
    # expected replay: T/2 * 1 step/s * 2 ms = 0.5878 s; worst twice that
    assert c.expected_replay_s == pytest.approx(587.877538 / 2 * 0.002, rel=1e-6)
    assert c.worst_replay_s == pytest.approx(2 * c.expected_replay_s)
    assert c.expected_work_lost_s == pytest.approx(587.877538 / 2 + 2.0, rel=1e-6)
    assert c.persist_bytes_per_day == pytest.approx(4096 * 86400 / 587.877538, rel=1e-6)


def test_max_replay_bounds_the_interval() -> None:
    # 30 s of replay at 100 steps/s * 2 ms/record = 0.2 s per second of adaptation -> 150 s
    c = choose(_inputs(steps_per_s=100.0))
    assert c.bound == "max replay" and c.interval_s == pytest.approx(150.0) and c.worst_replay_s == pytest.approx(30.0)


def test_the_journal_cap_bounds_the_interval() -> None:
    # 1 MiB cap at 10 steps/s * 1000 B = 10 kB/s -> 104.8576 s
    c = choose(_inputs(steps_per_s=10.0, journal_max_bytes=1 << 20))
    assert c.bound == "journal cap" and c.interval_s == pytest.approx(104.8576)


def test_the_flash_budget_lengthens_the_interval_unless_a_safety_limit_forbids_it() -> None:
    # 4096 B per persist within 100 kB/day -> one persist per 3538.944 s
    c = choose(_inputs(flash_budget_bytes_per_day=100_000))
    assert c.bound == "flash budget" and c.interval_s == pytest.approx(4096 * 86400 / 100_000)
    assert not c.over_budget
    tight = choose(_inputs(flash_budget_bytes_per_day=100_000, steps_per_s=100.0))
    assert tight.bound == "max replay" and tight.interval_s == pytest.approx(150.0) and tight.over_budget


def test_a_tiny_cost_is_held_at_the_minimum() -> None:
    c = choose(_inputs(capture_pause_s=0.0, persist_s=0.0001, mtbf_s=100.0))
    assert c.bound == "minimum" and c.interval_s == 5.0
