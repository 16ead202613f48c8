"""The slot state machine, its JSON form and the anti-rollback floor rule (pure)."""

from __future__ import annotations

import pytest

from appliance.errors import ManifestError
from appliance.format import slotstate as ss
from appliance.format.slotstate import BootState, SlotState

pytestmark = pytest.mark.unit
D1, D2 = "1" * 64, "2" * 64
NOW = "2026-01-01T00:00:00Z"


def test_a_new_candidate_starts_unknown_with_one_attempt() -> None:
    s = ss.attempt(ss.unknown("A"), 5, D1, NOW)
    assert (s.state, s.generation, s.manifest_digest, s.attempts) == (BootState.UNKNOWN, 5, D1, 1)


def test_repeated_attempts_of_the_same_candidate_count_up_and_exhaust() -> None:
    s = ss.unknown("A")
    for _ in range(3):
        s = ss.attempt(s, 5, D1, NOW)
    assert s.attempts == 3 and not ss.exhausted(s, 3)
    assert ss.exhausted(ss.attempt(s, 5, D1, NOW), 3)


def test_mark_good_resets_attempts_and_records_provenance() -> None:
    s = ss.mark_good(ss.attempt(ss.unknown("B"), 7, D1, NOW), 7, D1, NOW)
    assert (s.state, s.attempts, s.good_generation, s.good_digest, s.good_since) == (BootState.GOOD, 0, 7, D1, NOW)


def test_crashes_after_good_count_against_the_same_candidate() -> None:
    good = ss.mark_good(ss.unknown("B"), 7, D1, NOW)
    s = ss.crash(ss.crash(good, 7, D1, NOW), 7, D1, NOW)
    assert s.state is BootState.GOOD and s.attempts == 2


def test_marking_the_good_candidate_bad_withdraws_its_good_mark() -> None:
    good = ss.mark_good(ss.unknown("B"), 7, D1, NOW)
    bad = ss.mark_bad(good, 7, D1, "crash loop", NOW)
    assert bad.state is BootState.BAD and bad.good_generation is None and bad.refuses(7)


def test_a_newer_candidate_going_bad_keeps_the_older_good_mark() -> None:
    good = ss.mark_good(ss.unknown("B"), 4, D1, NOW)
    bad = ss.mark_bad(ss.attempt(good, 6, D2, NOW), 6, D2, "canary", NOW)
    assert bad.good_generation == 4 and bad.refuses(6) and not bad.refuses(4)


def test_attempting_a_new_generation_after_bad_starts_fresh() -> None:
    bad = ss.mark_bad(ss.unknown("A"), 3, D1, "x", NOW)
    s = ss.attempt(bad, 5, D2, NOW)
    assert s.state is BootState.UNKNOWN and s.attempts == 1 and s.reason == ""


def test_refusals_of_older_generations_do_not_overwrite_the_current_candidate() -> None:
    s = ss.attempt(ss.unknown("A"), 9, D1, NOW)
    assert ss.refuse(s, 7, None, "old", NOW) == s
    assert ss.refuse(s, 9, D1, "sig", NOW).refuses(9)


def test_reset_clears_bad() -> None:
    s = ss.reset(ss.mark_bad(ss.unknown("A"), 3, D1, "x", NOW), NOW)
    assert s.state is BootState.UNKNOWN and s.attempts == 0 and not s.refuses(3)


def test_json_round_trip() -> None:
    s = ss.mark_bad(ss.mark_good(ss.unknown("A"), 2, D1, NOW), 3, D2, "why", NOW)
    assert SlotState.from_dict(s.to_dict(), "A") == s


@pytest.mark.parametrize(
    "change",
    [
        {"state": "MAYBE"},
        {"slot": "B"},
        {"attempts": -1},
        {"generation": "7"},
        {"manifest_digest": "xyz"},
        {"format": "other"},
        {"extra": 1},
    ],
)
def test_malformed_state_is_refused(change: dict) -> None:
    d = ss.mark_good(ss.unknown("A"), 2, D1, NOW).to_dict() | change
    with pytest.raises(ManifestError):
        SlotState.from_dict(d, "A")


def test_floor_stays_until_both_slots_were_proven_then_takes_the_older() -> None:
    a = ss.mark_good(ss.unknown("A"), 5, D1, NOW)
    assert ss.floor_after_good(0, [a, ss.unknown("B")]) == 0
    b = ss.mark_good(ss.unknown("B"), 8, D2, NOW)
    assert ss.floor_after_good(0, [a, b]) == 5
    assert ss.floor_after_good(6, [a, b]) == 6  # never lowered


def test_good_generations_feed_the_store() -> None:
    a = ss.mark_good(ss.unknown("A"), 5, D1, NOW)
    assert ss.good_generations([a, ss.unknown("B")]) == {"A": 5, "B": None}
