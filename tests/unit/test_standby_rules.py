"""Which running service boot may keep as a standby (docs/boot.md §14): pure rule and its wait."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.boot.control import DEAD_STATES, ProcessInfo
from appliance.boot.trial import STANDBY_PHASES, STANDBY_REPORT_S, TrialContext, find_standby, is_standby
from appliance.events import EventLog
from appliance.format.handoff import Admit, Handoff, Phase, ServiceReport
from appliance.node.config import NodeConfig
from appliance.node.rundir import RunDir

pytestmark = pytest.mark.unit
HANDOFF = Handoff("b" * 16, "A", 3, "d" * 64, Admit.SELF, "2026-12-06T00:00:00Z")
STATES = sorted(DEAD_STATES | {"STARTING", "RUNNING"})


@given(
    state=st.sampled_from(STATES),
    pid=st.integers(1, 2**31 - 1),
    report_pid=st.one_of(st.none(), st.integers(1, 2**31 - 1)),
    phase=st.sampled_from(list(Phase)),
    handoff=st.sampled_from([None, HANDOFF]),
    cleared=st.booleans(),
)
def test_a_standby_is_a_live_process_that_cannot_have_read_a_handoff(
    state: str, pid: int, report_pid: int | None, phase: Phase, handoff: Handoff | None, cleared: bool
) -> None:
    """Kept only if alive and: its own report names no handoff (and it has not gone past standby), or it
    has not reported and boot's clearing found no handoff it could have read."""
    info = ProcessInfo("model", state, pid, 0)
    report = None if report_pid is None else ServiceReport(report_pid, phase, handoff, "t")
    if report_pid == pid:
        expected = handoff is None and phase in (Phase.STARTING, Phase.LOADING, Phase.STANDBY)
    else:
        expected = not cleared
    assert is_standby(info, report, cleared) is (state not in DEAD_STATES and expected)


def test_a_service_that_read_any_handoff_is_never_kept() -> None:
    """Regression: a service restoring an earlier boot's handoff would restore the wrong checkpoint."""
    for phase in STANDBY_PHASES:
        for cleared in (False, True):
            report = ServiceReport(7, phase, HANDOFF, "t")
            assert not is_standby(ProcessInfo("model", "RUNNING", 7, 0), report, cleared)


class _Control:
    def __init__(self, info: ProcessInfo) -> None:
        self.current = info

    def start(self, name: str) -> None:
        raise AssertionError("find_standby never starts anything")

    def stop(self, name: str) -> None:
        raise AssertionError("find_standby never stops anything")

    def info(self, name: str) -> ProcessInfo:
        return self.current


def _ctx(tmp_path: Path, info: ProcessInfo) -> tuple[TrialContext, list[float]]:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    run = RunDir(str(tmp_path / "run"))
    ctx = TrialContext(
        NodeConfig(run_dir=str(tmp_path / "run")), run, _Control(info), None,  # type: ignore[arg-type]
        EventLog(str(tmp_path / "events.jsonl"), "boot"), clock=lambda: now[0], sleep=sleep,
    )  # fmt: skip
    return ctx, now


def test_find_standby_waits_for_the_first_report_then_gives_up(tmp_path: Path) -> None:
    """A live service that never reports within STANDBY_REPORT_S is not kept (boot restarts it)."""
    ctx, now = _ctx(tmp_path, ProcessInfo("model", "RUNNING", 42, 0))
    ctx.run.write_report(ServiceReport(41, Phase.STANDBY, None, "t"))  # an earlier process's report
    assert find_standby(ctx, handoff_cleared=True) == 0
    assert now[0] > STANDBY_REPORT_S


def test_find_standby_keeps_an_unreported_process_at_once_when_no_handoff_existed(tmp_path: Path) -> None:
    """Power-on (an empty /run): nothing to read, so a service still starting is kept without waiting."""
    ctx, now = _ctx(tmp_path, ProcessInfo("model", "STARTING", 42, 0))
    assert find_standby(ctx, handoff_cleared=False) == 42 and now[0] == 0.0


def test_find_standby_keeps_a_reported_standby_at_once(tmp_path: Path) -> None:
    ctx, now = _ctx(tmp_path, ProcessInfo("model", "RUNNING", 42, 0))
    ctx.run.write_report(ServiceReport(42, Phase.LOADING, None, "t"))
    assert find_standby(ctx, handoff_cleared=True) == 42 and now[0] == 0.0


def test_find_standby_does_not_wait_for_a_dead_service(tmp_path: Path) -> None:
    ctx, now = _ctx(tmp_path, ProcessInfo("model", "FATAL", 0, 1))
    assert find_standby(ctx, handoff_cleared=True) == 0 and now[0] == 0.0
