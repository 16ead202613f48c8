"""One boot trial: hand a checkpoint to the model service, wait for its verified restore, run the canary.

Owns: ``run_trial`` and its result (``Trial``): writing the handoff, (re)starting the service
program, watching its report and process state until it is restored, failed, dead or out of
time, then the health gate (the checkpoint's canary, answered by the restored service).
It also decides *whom to blame* (the blame table, docs/boot.md §4): only what the checkpoint
itself can cause condemns it — a failed signature, digest or structure check while restoring
(an ``IntegrityError``), a service that dies while restoring, a canary answered wrongly.
Node and model faults blame no checkpoint: a service that fails before it restores, a model
whose tensors do not fit (``ModelFaultError``), a model that cannot take the canary input
(HTTP 422), a configuration or service error (exit codes 10-29 and 65-67).
Standby (docs/boot.md §14): a service that supervisord started at power-on and that has read
no handoff (``find_standby``) is kept, so its torch import and model build overlap boot's own
start and discovery; the trial then only writes the handoff, and the standby restores from it.
Does not own marking slots or choosing candidates (``sequence``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.boot.control import ProcessInfo, ServiceControl
from appliance.errors import ApplianceError, CanaryFailedError, ControlChannelError, ModelFaultError, ServiceError
from appliance.events import EventLog
from appliance.format.canary import Canary, check
from appliance.format.handoff import Handoff, Phase, ServiceReport
from appliance.node.config import NodeConfig
from appliance.node.control_channel import ControlClient
from appliance.node.notify import sd_notify
from appliance.node.rundir import RunDir
from appliance.store.discovery import OpenCheckpoint

BLAMELESS_PHASES = frozenset({Phase.STARTING.value, Phase.LOADING.value, Phase.STANDBY.value})
STANDBY_REPORT_S = 5.0  # how long boot waits for a running service's first report before replacing it
# What a kept standby may be doing: nothing read from any handoff yet (docs/boot.md §14)
STANDBY_PHASES = frozenset({Phase.STARTING, Phase.LOADING, Phase.STANDBY})
MODEL_FAULT_CODES = frozenset({*range(10, 30), *range(51, 55), ServiceError.exit_code, 66, ModelFaultError.exit_code})
# 51-54: the adaptation journal's key or storage failed — the node's fault, never the checkpoint's


class ServiceProbe(Protocol):
    def canary(self, inputs: list[Any]) -> Any: ...

    def admit(self, boot_id: str) -> None: ...


class ControlProbe:
    """The model service's control channel (``RUN/control.sock``) as the boot sequence uses it."""

    def __init__(self, socket_path: str, timeout: float = 60.0) -> None:
        self.client = ControlClient(socket_path, timeout)

    def canary(self, inputs: list[Any]) -> Any:
        try:
            status, body = self.client.call("POST", "/v1/canary", {"inputs": inputs})
        except ControlChannelError as exc:
            raise ServiceError(f"the service's control channel failed: {exc.problem}") from exc
        if status == 422:
            raise ModelFaultError(f"the model cannot take the canary input (HTTP 422): {body}")
        if status != 200 or not isinstance(body, dict):
            raise ServiceError(f"the service refused the canary (HTTP {status}): {body}")
        return body.get("outputs")

    def admit(self, boot_id: str) -> None:
        try:
            status, body = self.client.call("POST", "/v1/admit", {"boot_id": boot_id})
        except ControlChannelError as exc:
            raise ServiceError(f"the service's control channel failed: {exc.problem}") from exc
        if status != 200:
            raise ServiceError(f"the service refused admission (HTTP {status}): {body}")


@dataclass
class TrialContext:
    config: NodeConfig
    run: RunDir
    control: ServiceControl
    probe: ServiceProbe
    events: EventLog
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll: float = 0.05


@dataclass
class Trial:
    ok: bool
    phase: str  # the furthest phase the service reached
    reason: str = ""
    report: ServiceReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    model_fault: bool = False  # the model or its configuration failed, not the checkpoint (gate or report)

    @property
    def blames_checkpoint(self) -> bool:
        return not self.ok and self.phase not in BLAMELESS_PHASES and not self.node_fault and not self.model_fault

    @property
    def node_fault(self) -> str:
        """Why the node (not the service, not a checkpoint) failed the trial, e.g. ``port``; "" if not."""
        error = (self.report.error or {}) if self.report and not self.ok else {}
        return str(error.get("node_fault") or "")


def is_standby(info: ProcessInfo, report: ServiceReport | None, handoff_cleared: bool) -> bool:
    """Whether the running service ``info`` is a standby boot may keep (docs/boot.md §14). Pure.

    ``report``: the run directory's service report; ``handoff_cleared``: boot's clearing removed
    a handoff, so a process started before may have read it. Kept: a live process whose *own*
    report names no handoff and says starting/loading/standby; or, when no handoff existed, a
    live process that has not reported yet (it can have read none). Never kept: one whose report
    names any handoff (it restores that one).
    """
    if not info.alive:
        return False
    if report is not None and report.pid == info.pid:
        return report.handoff is None and report.phase in STANDBY_PHASES
    return not handoff_cleared


def find_standby(ctx: TrialContext, handoff_cleared: bool) -> int:
    """The pid of a standby service boot may hand its first checkpoint to, else 0 (stop and start as before).

    Call after clearing the handoff (``handoff_cleared``: whether one was there). When one was,
    a service that runs but has not reported yet (its interpreter is starting) is waited for up
    to ``STANDBY_REPORT_S``: its first report says whether it read that handoff first.
    """
    program = ctx.config.service_program
    deadline = ctx.clock() + STANDBY_REPORT_S
    while True:
        info = ctx.control.info(program)
        report = ctx.run.read_report()
        reported = report is not None and report.pid == info.pid
        if not info.alive or reported or not handoff_cleared or ctx.clock() > deadline:
            return info.pid if is_standby(info, report, handoff_cleared) else 0
        ctx.sleep(ctx.poll)


def run_trial(ctx: TrialContext, opened: OpenCheckpoint, handoff: Handoff, standby: int = 0) -> Trial:
    """Hand ``handoff`` to the service — the ``standby`` pid when given, else a freshly (re)started one —
    wait for its verified restore, then run the canary."""
    program = ctx.config.service_program
    if not standby:
        ctx.control.stop(program)
        ctx.run.clear_report()
    ctx.run.write_handoff(handoff)
    start = ctx.clock()
    if not standby:
        ctx.control.start(program)
    trial = _wait_restored(ctx, handoff, standby)
    trial.seconds["service_start_s"] = ctx.clock() - start
    if not trial.ok:
        return trial
    gate_start = ctx.clock()
    trial = _health_gate(ctx, opened, trial)
    trial.seconds["canary_s"] = ctx.clock() - gate_start
    return trial


def _mine(ctx: TrialContext, boot_id: str, pid: int) -> ServiceReport | None:
    """The service's report about this handoff; or the standby ``pid``'s failure before it took the handoff."""
    report = ctx.run.read_report()
    if report and report.handoff and report.handoff.boot_id == boot_id:
        return report
    failed_standby = report and pid and report.pid == pid and report.handoff is None and report.phase is Phase.FAILED
    return report if failed_standby else None


def _wait_restored(ctx: TrialContext, handoff: Handoff, standby: int = 0) -> Trial:
    deadline = ctx.clock() + ctx.config.ready_timeout
    last_note = 0.0
    first_pid = standby  # supervisord may restart a dead service before we look: a new pid is a death too
    while True:
        report = _mine(ctx, handoff.boot_id, first_pid)
        phase = report.phase.value if report else Phase.STARTING.value
        if report and report.phase in (Phase.RESTORED, Phase.SERVING):
            return Trial(True, phase, report=report)
        if report and report.phase is Phase.FAILED:
            return _failed(report)
        info = ctx.control.info(ctx.config.service_program)
        first_pid = first_pid or info.pid
        if info.alive and info.pid and info.pid != first_pid:
            return Trial(False, phase, f"the service died while {phase} and was restarted", report)
        if not info.alive:
            report = _mine(ctx, handoff.boot_id, first_pid) or report  # it may have reported just before exiting
            if report and report.phase is Phase.FAILED:
                return _failed(report)
            return Trial(
                False, phase, f"the service exited while {phase} ({info.state}, exit status {info.exitstatus})"
            )
        if ctx.clock() > deadline:
            return Trial(False, phase, f"the service was still {phase} after {ctx.config.ready_timeout:.0f}s", report)
        if ctx.clock() - last_note > 10:
            last_note = ctx.clock()
            sd_notify(f"STATUS=restoring {handoff.slot}/{handoff.generation}: {phase}", "EXTEND_TIMEOUT_USEC=30000000")
        ctx.sleep(ctx.poll)


def _failed(report: ServiceReport) -> Trial:
    error = report.error or {}
    phase = str(error.get("phase", report.phase.value))
    code = error.get("exit_code")
    reason = f"{error.get('error', 'error')}: {error.get('problem', 'the service failed')}"
    return Trial(False, phase, reason, report, model_fault=code in MODEL_FAULT_CODES)


def _health_gate(ctx: TrialContext, opened: OpenCheckpoint, trial: Trial) -> Trial:
    where = {"slot": opened.slot, "generation": opened.generation}
    try:
        canary = Canary.from_metadata(dict(opened.verified.manifest.metadata))
    except ApplianceError as exc:
        return _gate_failed(ctx, trial, where, f"the checkpoint's canary is malformed: {exc.problem}")
    if canary is None:
        detail = "no canary in this checkpoint; the gate is the verified restore alone"
    else:
        try:
            result = check(canary, ctx.probe.canary(canary.input))
        except ModelFaultError as exc:
            ctx.events.emit("canary.refused_input", **where, detail=exc.problem)
            return Trial(False, "restored", f"{type(exc).__name__}: {exc.problem}", trial.report, trial.seconds, True)
        except ServiceError as exc:
            return _gate_failed(ctx, trial, where, f"the service did not answer the canary: {exc.problem}")
        if not result.ok:
            return _gate_failed(ctx, trial, where, f"{CanaryFailedError.__name__}: {result.detail}")
        detail = result.detail
    info = ctx.control.info(ctx.config.service_program)
    if not info.alive or (trial.report is not None and info.pid != trial.report.pid):
        return Trial(False, "restored", "the service died while answering the canary", trial.report, trial.seconds)
    ctx.events.emit("canary.passed", **where, detail=detail)
    return trial


def _gate_failed(ctx: TrialContext, trial: Trial, where: dict[str, Any], detail: str) -> Trial:
    ctx.events.emit("canary.failed", **where, detail=detail)
    return Trial(False, "restored", f"canary: {detail}", trial.report, trial.seconds)
