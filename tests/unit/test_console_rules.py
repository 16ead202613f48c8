"""The recovery console's pure rules: lockout machine, sessions, Host/Origin decisions, action plans."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.format import console as rules

pytestmark = pytest.mark.unit
POLICY = rules.LockoutPolicy(max_failures=5, window_s=900, lockout_s=900)


def test_five_failures_within_the_window_lock_and_the_lock_expires() -> None:
    rec = rules.LoginRecord()
    for i in range(4):
        rec = rules.after_failure(rec, 100.0 + i, POLICY)
        assert not rec.locked(100.0 + i)
    rec = rules.after_failure(rec, 104.0, POLICY)
    assert rec.locked(104.0) and rec.retry_after(104.0) == 900
    assert not rec.locked(104.0 + 900)


def test_failures_outside_the_window_do_not_add_up() -> None:
    rec = rules.LoginRecord()
    for i in range(10):
        rec = rules.after_failure(rec, i * 1000.0, POLICY)
        assert not rec.locked(i * 1000.0)


def test_success_clears_failures_but_never_an_active_lock() -> None:
    rec = rules.LoginRecord()
    for i in range(5):
        rec = rules.after_failure(rec, float(i), POLICY)
    assert rules.after_success(rec).locked(10.0)
    rec2 = rules.after_success(rules.after_failure(rules.LoginRecord(), 0.0, POLICY))
    assert rec2.failures == ()


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=60))
def test_no_sequence_of_failures_allows_more_than_max_guesses_per_window(times: list[float]) -> None:
    """Property: within any lockout window an attacker gets at most ``max_failures`` tries."""
    rec, tried = rules.LoginRecord(), []
    for t in sorted(times):
        if rec.locked(t):
            continue
        tried.append(t)
        rec = rules.after_failure(rec, t, POLICY)
    for start in tried:
        assert sum(1 for t in tried if start <= t < start + POLICY.window_s) <= POLICY.max_failures


def test_sessions_expire_on_idle_and_absolute_time() -> None:
    p = rules.SessionPolicy(idle_s=10, absolute_s=100)
    assert rules.session_alive(0, 5, 14, p)
    assert not rules.session_alive(0, 5, 15, p)
    assert not rules.session_alive(0, 99, 100, p)


@pytest.mark.parametrize(
    ("host", "ok"),
    [("127.0.0.1:8471", True), ("localhost", True), ("[::1]:8471", True), ("LOCALHOST:1", True),
     ("attacker.example", False), ("127.0.0.1.attacker.example", False), ("", False), (None, False)],
)  # fmt: skip
def test_dns_rebinding_host_is_refused(host: str | None, ok: bool) -> None:
    assert rules.host_allowed(host, ["127.0.0.1", "localhost", "::1"]) is ok


@pytest.mark.parametrize(
    ("origin", "referer", "ok"),
    [("http://127.0.0.1:8471", None, True), (None, "https://localhost/slots", True),
     ("http://evil.example", "http://127.0.0.1/", False), ("null", None, False), (None, None, False),
     ("file:///x", None, False), ("http://127.0.0.1.evil.example", None, False)],
)  # fmt: skip
def test_foreign_origin_is_refused(origin: str | None, referer: str | None, ok: bool) -> None:
    assert rules.origin_allowed(origin, referer, ["127.0.0.1", "localhost"]) is ok


def test_plain_http_only_on_loopback() -> None:
    assert not rules.needs_tls("127.0.0.1") and not rules.needs_tls("::1") and not rules.needs_tls("localhost")
    assert rules.needs_tls("192.168.7.2") and rules.needs_tls("0.0.0.0") and rules.needs_tls("node.local")


FACTS = [rules.GenerationFacts("A", 5, True), rules.GenerationFacts("B", 4, True),
         rules.GenerationFacts("A", 3, False, "UntrustedKeyError: signed by an unknown key"),
         rules.GenerationFacts("B", 2, True)]  # fmt: skip


def test_rollback_within_the_floor_is_planned_as_a_new_generation() -> None:
    plan = rules.plan_rollback(4, floor=2, newest=5, facts=FACTS)
    assert (
        plan.allowed
        and plan.commits
        and "new generation 6" in plan.consequence
        and "(2) is not lowered" in plan.consequence
    )


@pytest.mark.parametrize(
    ("target", "why"),
    [(1, "not committed"), (2, "below the anti-rollback floor 3"), (3, "does not verify: UntrustedKeyError"),
     (5, "not older than the newest"), (9, "not committed")],
)  # fmt: skip
def test_rollback_outside_the_floor_or_trust_rules_is_refused(target: int, why: str) -> None:
    plan = rules.plan_rollback(target, floor=3, newest=5, facts=FACTS)
    assert not plan.allowed and why in (plan.refusal or "")


def test_slot_reset_only_for_a_bad_slot() -> None:
    assert not rules.plan_slot_reset("A", {"state": "GOOD"}).allowed
    plan = rules.plan_slot_reset("B", {"state": "BAD", "generation": 4, "reason": "canary failed"})
    assert plan.allowed and "canary failed" in plan.consequence
