"""The supervisord event listener: a model service that keeps dying after its restore is boot-counted.

Owns: ``Guard`` — reading PROCESS_STATE events (supervisord's listener protocol via
``supervisor.childutils``; stdout carries only the protocol, logs go to stderr), counting each
unexpected exit of the *serving* service as a boot attempt of its checkpoint, and on too many
attempts or FATAL: mark the checkpoint BAD and run ``appliance boot`` (which picks the other).
Does not own the boot sequence itself (it runs as a child process, so its output never reaches
the protocol stream).

An event counts only while no boot is running, the handoff says the checkpoint was proven
GOOD, and the dying pid is the one that reported serving that handoff; events that queued up
while a boot ran (about candidates that boot already judged) are therefore ignored.

Blame (docs/boot.md, blame table): a death the kernel caused for memory — the OOM-kill counter
of the service's cgroup (or the system's) rose since the service started (``appliance.node.kills``)
— is a ``service.killed`` event and never counts against the checkpoint; a death before the
restore, or one the service reported as a node fault (a port held by someone else), never does
either; any other death counts, but a GOOD checkpoint that served ``crash_decay_s`` since its
last counted crash or GOOD mark starts counting from zero again (``slot.crashes_forgiven``).
"""

from __future__ import annotations

import calendar
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from supervisor import childutils

from appliance.boot.control import ServiceControl
from appliance.boot.trial import BLAMELESS_PHASES
from appliance.events import EventLog
from appliance.format import slotstate as ss
from appliance.format.handoff import Admit, Handoff, Phase, ServiceReport
from appliance.node import kills
from appliance.node.config import NodeConfig
from appliance.node.rundir import RunDir
from appliance.store.bootstate import SlotStates


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Guard:
    def __init__(
        self,
        config: NodeConfig,
        states: SlotStates,
        control: ServiceControl,
        events: EventLog,
        reboot: Callable[[], int],
    ) -> None:
        self.config = config
        self.states = states
        self.control = control
        self.events = events
        self.reboot = reboot
        self.run = RunDir(config.run_dir)
        self.blameless = 0  # consecutive deaths before a restore began (a broken service, not a checkpoint)

    def serve_forever(self, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
        while True:
            headers, payload = childutils.listener.wait(stdin, stdout)
            try:
                self.handle(headers.get("eventname", ""), childutils.get_headers(payload.split("\n", 1)[0]))
            except Exception as exc:  # the listener must survive anything and keep acknowledging
                print(f"appliance guard: {type(exc).__name__}: {exc}", file=sys.stderr)
            childutils.listener.ok(stdout)

    def handle(self, event: str, fields: dict[str, str]) -> str:
        """Act on one event; returns what was done (for logs and tests)."""
        if fields.get("processname") != self.config.service_program:
            return "ignored: another program"
        if event == "PROCESS_STATE_EXITED" and fields.get("expected") == "0":
            return self.on_crash(int(fields.get("pid", "0") or 0))
        if event == "PROCESS_STATE_FATAL":
            return self.on_fatal()
        return "ignored: not a failure"

    def on_crash(self, pid: int) -> str:
        ignored, handoff, report = self._serving_process(pid)
        if ignored or handoff is None or report is None:
            return ignored
        error = report.error or {}
        if error.get("node_fault"):
            return f"ignored: node fault ({error['node_fault']}); supervisord retries"
        phase = str(error.get("phase", report.phase.value)) if report.phase is Phase.FAILED else report.phase.value
        if phase in BLAMELESS_PHASES:
            return self._broken_service(f"the service died while {phase} (before restoring)")
        self.blameless = 0
        cause = self._killed(pid)
        if cause:
            self.events.emit("service.killed", pid=pid, cause=cause, slot=handoff.slot, generation=handoff.generation)
            return f"not counted: killed by {cause}"
        state = self._decayed(self.states.load(handoff.slot), handoff)
        state = ss.crash(state, handoff.generation, handoff.manifest_digest, _utc())
        self.states.write(state)
        self.events.emit(
            "service.crashed",
            slot=handoff.slot,
            generation=handoff.generation,
            pid=pid,
            attempts=state.attempts,
            max_attempts=self.config.max_boot_attempts,
        )
        if not ss.exhausted(state, self.config.max_boot_attempts):
            return "counted"
        return self._condemn(handoff.slot, handoff.generation, handoff.manifest_digest,
                             f"the service died {state.attempts} times after restoring it")  # fmt: skip

    def _serving_process(self, pid: int) -> tuple[str, Handoff | None, ServiceReport | None]:
        """("", handoff, report) if ``pid`` served the current GOOD handoff, else why the event is ignored."""
        if self.run.boot_running():
            return "ignored: a boot is running", None, None
        handoff, report = self.run.read_handoff(), self.run.read_report()
        if handoff is None or handoff.admit is not Admit.SELF:
            return "ignored: no checkpoint proven GOOD is being served", None, None
        if report is None or report.pid != pid or report.handoff is None or report.handoff.boot_id != handoff.boot_id:
            return "ignored: not the process serving the current handoff", None, None
        return "", handoff, report

    def _killed(self, pid: int) -> str:
        """Who ended ``pid`` if it was the kernel for memory (OOM killer, cgroup limit), else ""."""
        witness = kills.Witness.read(self.config.run_dir)
        return witness.oom_killed_since() if witness is not None and witness.pid == pid else ""

    def _decayed(self, state: ss.SlotState, handoff: Handoff) -> ss.SlotState:
        """A GOOD checkpoint that served ``crash_decay_s`` since its last transition forgets older crashes."""
        healthy = forgiven_after(state, self.config.crash_decay_s, time.time())
        if healthy is None:
            return state
        self.events.emit("slot.crashes_forgiven", slot=state.slot, generation=handoff.generation,
                         healthy_s=round(healthy), attempts=state.attempts)  # fmt: skip
        return replace(state, attempts=0)

    def on_fatal(self) -> str:
        if self.run.boot_running():
            return "ignored: a boot is running"
        handoff = self.run.read_handoff()
        if handoff is None or handoff.admit is not Admit.SELF:
            return "ignored: no checkpoint proven GOOD is being served"
        if self.control.info(self.config.service_program).state != "FATAL":
            return "ignored: the service is no longer FATAL"
        report = self.run.read_report()
        if report is None or report.phase.value in BLAMELESS_PHASES:
            self.blameless = 0
            code = self.reboot()  # boot retries; a service that cannot even load ends in recovery mode
            return f"service FATAL before restoring; boot exited {code}"
        return self._condemn(handoff.slot, handoff.generation, handoff.manifest_digest,
                             "supervisord gave up restarting the service (FATAL)")  # fmt: skip

    def _broken_service(self, reason: str) -> str:
        """Deaths before the restore are the service's fault: counted here, never against a checkpoint."""
        self.blameless += 1
        if self.blameless <= self.config.max_boot_attempts:
            return f"not counted against the checkpoint: {reason}"
        self.blameless = 0
        code = self.reboot()
        return f"service keeps dying before restoring; boot exited {code}"

    def _condemn(self, slot: str, generation: int, digest: str, reason: str) -> str:
        state = ss.mark_bad(self.states.load(slot), generation, digest, reason, _utc())
        self.states.write(state)
        self.events.emit("slot.marked_bad", slot=slot, generation=generation, reason=reason)
        self.events.emit("fallback.taken", slot=slot, generation=generation, reason=reason)
        code = self.reboot()
        return f"condemned; boot exited {code}"


def forgiven_after(state: ss.SlotState, decay_s: float, now: float) -> float | None:
    """Seconds of healthy serving that wipe ``state``'s crash count, or ``None`` if they do not (yet).

    Only a GOOD state with crashes counted qualifies; the healthy period runs from its last
    transition (the GOOD mark or the last counted crash) to ``now``.
    """
    if state.state is not ss.BootState.GOOD or state.attempts == 0 or not state.updated:
        return None
    try:
        since = calendar.timegm(time.strptime(state.updated, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None
    healthy = now - since
    return healthy if healthy >= decay_s else None


def boot_subprocess(config_path: Path) -> Callable[[], int]:
    """Run ``appliance boot`` as a child whose stdout goes to our stderr (never the protocol)."""

    def reboot() -> int:
        cmd = [sys.executable, "-m", "appliance.cli.main", "boot", "--config", str(config_path)]
        return subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False).returncode  # noqa: S603

    return reboot
