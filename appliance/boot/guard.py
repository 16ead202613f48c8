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
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from supervisor import childutils

from appliance.boot.control import ServiceControl
from appliance.boot.trial import BLAMELESS_PHASES
from appliance.events import EventLog
from appliance.format import slotstate as ss
from appliance.format.handoff import Admit
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
        if self.run.boot_running():
            return "ignored: a boot is running"
        handoff, report = self.run.read_handoff(), self.run.read_report()
        if handoff is None or handoff.admit is not Admit.SELF:
            return "ignored: no checkpoint proven GOOD is being served"
        if report is None or report.pid != pid or report.handoff is None or report.handoff.boot_id != handoff.boot_id:
            return "ignored: not the process serving the current handoff"
        if report.phase.value in BLAMELESS_PHASES:
            return self._broken_service(f"the service died while {report.phase.value} (before restoring)")
        self.blameless = 0
        state = ss.crash(self.states.load(handoff.slot), handoff.generation, handoff.manifest_digest, _utc())
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


def boot_subprocess(config_path: Path) -> Callable[[], int]:
    """Run ``appliance boot`` as a child whose stdout goes to our stderr (never the protocol)."""

    def reboot() -> int:
        cmd = [sys.executable, "-m", "appliance.cli.main", "boot", "--config", str(config_path)]
        return subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False).returncode  # noqa: S603

    return reboot
