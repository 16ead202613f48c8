"""The boot sequence: newest committed checkpoint that verifies and proves itself, else the next, else recovery.

Owns: ``boot`` / ``BootRun`` — under the boot lock: keep a standby service (docs/boot.md §14)
or stop the service, scan both slots, walk
candidates newest first (skipping ones marked BAD, in unavailable slots or below the
anti-rollback floor; refusing ones whose record, signature, model id or frame presence fail),
count the attempt durably, run a trial (``trial``), then either mark GOOD -> raise the floor ->
admit traffic, or mark BAD and fall back. With nothing left and a second site configured
(``BootContext.second_site``, the object-store replica): fetch its newest checkpoint that passes
every local rule into the inactive slot and walk again, through the same canary gate. With
nothing left after that (or the second site unreachable): recovery mode.
Does not own the state machine (``appliance.format.slotstate``) or the trial mechanics.

Invariants (docs/boot.md §1):
* B1 Nothing is served that was not restored with every frame verified and admitted by boot
  after its canary (or restarted by supervisord after being proven GOOD).
* B2 An attempt is counted durably before the handoff is written (nothing is restored without
  one), so a crash of the whole node during restore still uses up an attempt.
* B3 The floor rises only after a GOOD mark, and never above the fallback slot's proven state.
* B4 A failure before the restore starts blames the service, never a checkpoint.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.boot.control import ServiceControl
from appliance.boot.trial import BLAMELESS_PHASES, Trial, TrialContext, find_standby, run_trial
from appliance.errors import (
    ApplianceError,
    KeyUnavailableError,
    NoValidCheckpointError,
    RollbackError,
    ServiceError,
    StorageError,
)
from appliance.events import EventLog
from appliance.format import slotstate as ss
from appliance.format.handoff import KEY_FAULT, Admit, Handoff
from appliance.format.plan import Candidate, boot_order, protected_slot
from appliance.node.config import NodeConfig
from appliance.node.floor import FloorMissingError, FloorUnreadableError, GenerationFloor
from appliance.node.mounts import unavailable_slots
from appliance.node.notify import sd_notify
from appliance.node.rundir import RunDir
from appliance.store.bootstate import SlotStates
from appliance.store.discovery import OpenCheckpoint, open_checkpoint, scan
from appliance.store.keys import cipher_for
from appliance.store.store import Store
from appliance.store.warm import start_warming


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class BootOutcome:
    boot_id: str
    serving: dict[str, Any] | None = None
    stages: dict[str, float] = field(default_factory=dict)
    restore: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    recovery: str | None = None
    exit_code: int = 0
    replay: dict[str, Any] | None = None  # the service's journal replay (its report's ``replay``), if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "boot_id": self.boot_id,
            "serving": self.serving,
            "stages": {k: round(v, 6) for k, v in self.stages.items()},
            "restore": self.restore,
            "replay": self.replay,
            "failures": self.failures,
            "recovery": self.recovery,
        }


@dataclass
class BootContext(TrialContext):
    store: Store | None = None
    states: SlotStates | None = None
    floor: GenerationFloor | None = None
    # The second site (docs/boot.md §7): called with the floor when no local checkpoint could be
    # served; imports the remote's newest acceptable checkpoint and returns what it did (``site``,
    # ``generation``, ``slot``, ``stages``), None when it had nothing newer; raises ApplianceError.
    second_site: Callable[[int], dict[str, Any] | None] | None = None


def boot(ctx: BootContext) -> BootOutcome:
    with ctx.run.boot_lock():
        return BootRun(ctx).run()


class BootRun:
    def __init__(self, ctx: BootContext) -> None:
        assert ctx.store is not None and ctx.states is not None and ctx.floor is not None
        self.ctx = ctx
        self.store, self.states, self.floor_store = ctx.store, ctx.states, ctx.floor
        self.outcome = BootOutcome(uuid.uuid4().hex[:16])
        self.started = ctx.clock()
        self.floor = 0
        self.floor_damaged = False
        self.standby = 0  # the pid of a standby service the first trial hands its checkpoint to

    # --- the sequence ------------------------------------------------------------------

    def run(self) -> BootOutcome:
        self.store.good_provider = self.states.good_generations
        cleared = self.ctx.run.clear_handoff()
        self.standby = find_standby(self.ctx, cleared)  # importing torch and building the model: keep it (§14)
        if not self.standby:
            self.ctx.control.stop(self.ctx.config.service_program)
        self.ctx.run.clear_recovery()
        self.floor = self._read_floor()
        self.ctx.events.emit("boot.started", boot_id=self.outcome.boot_id, floor=self.floor)
        outcome = self._walk()
        if outcome is None and self._from_second_site():
            outcome = self._walk()
        return outcome or self._recover("no committed checkpoint verifies and restores", NoValidCheckpointError)

    def _walk(self) -> BootOutcome | None:
        """Try every local candidate; the outcome once one serves (or the service is at fault), else None."""
        for opened in self._candidates():
            try:  # a sealed checkpoint needs the store's key first: without it no trial, no attempt, no mark
                cipher_for(self.store.storage, opened.verified.manifest.encryption)
            except KeyUnavailableError as exc:
                return self._key_unavailable(opened, f"{type(exc).__name__}: {exc.problem}", type(exc))
            state = self._save(ss.attempt(self.states.load(opened.slot), opened.generation, _digest(opened), _utc()))
            self._emit("slot.attempt", opened, attempts=state.attempts, max_attempts=self.ctx.config.max_boot_attempts)
            if ss.exhausted(state, self.ctx.config.max_boot_attempts):
                self._fall_back(opened, f"{state.attempts - 1} boot attempts did not reach serving")
                continue
            handoff = Handoff(self.outcome.boot_id, opened.slot, opened.generation, _digest(opened), Admit.BOOT, _utc())
            warming = start_warming(self.store.storage, opened)  # cold reads overlap the service's start (advisory)
            try:
                standby, self.standby = self.standby, 0  # only the first trial: later ones start afresh
                trial = run_trial(self.ctx, opened, handoff, standby)
            finally:
                if warming is not None:
                    warming.stop()  # nothing of ours reads the slot after the trial
            if trial.ok:
                return self._serve(opened, handoff, trial)
            if trial.node_fault == KEY_FAULT:
                self._give_back_attempt(opened)
                return self._key_unavailable(opened, trial.reason, KeyUnavailableError)
            if trial.node_fault:
                return self._node_fault(opened, trial)
            if not trial.blames_checkpoint:
                return self._model_fault(opened, trial)
            self._fall_back(opened, trial.reason)
        return None

    def _from_second_site(self) -> bool:
        """Fetch a checkpoint from the second site; False (recovery as before) when none or unreachable."""
        if self.ctx.second_site is None:
            return False
        t0 = self.ctx.clock()
        try:
            fetched = self.ctx.second_site(self.floor)
        except (ApplianceError, StorageError, OSError) as exc:
            problem = getattr(exc, "problem", str(exc))
            self.outcome.failures.append(f"second site: {type(exc).__name__}: {problem}")
            self.ctx.events.emit("remote.restore_failed", site="object store", error=type(exc).__name__,
                                 problem=problem)  # fmt: skip
            return False
        finally:
            self._add_stage("second_site_s", self.ctx.clock() - t0)
        return fetched is not None

    def _candidates(self) -> Iterator[OpenCheckpoint]:
        """Checkpoints that open (record, bundle, signature, model, floor, frame presence), newest first."""
        missing = unavailable_slots(self.ctx.config.store, self.ctx.config.require_mounts)
        for slot, reason in missing.items():
            self.ctx.events.emit("slot.unavailable", slot=slot, reason=reason)
        for slot, reading in self.states.read_all().items():
            if reading.damaged:
                self.ctx.events.emit("slot.state_damaged", slot=slot, reason=reading.damaged)
        t0 = self.ctx.clock()
        found = scan(self.store.storage, self.store.limits)
        for bad in (r for r in found.records if r.error is not None and r.slot not in missing):
            self._refuse(bad.slot, bad.generation, None, bad.error or StorageError("unreadable record"))
        records = {(r.slot, r.generation): r.record for r in found.records if r.record and r.slot not in missing}
        good = self.states.good_generations()
        order = boot_order([Candidate(s, g) for s, g in records], protected_slot(found.views(good)) if good else None)
        self._add_stage("discover_s", self.ctx.clock() - t0)
        for cand in order:
            state = self.states.load(cand.slot)
            if state.refuses(cand.generation):
                self.outcome.failures.append(f"{cand.slot}/gen {cand.generation}: marked BAD earlier: {state.reason}")
                continue
            t0 = self.ctx.clock()
            opened = self._open(cand, records[(cand.slot, cand.generation)])
            self._add_stage("discover_s", self.ctx.clock() - t0)
            if opened is not None:
                yield opened

    def _open(self, cand: Candidate, record: Any) -> OpenCheckpoint | None:
        try:
            if cand.generation < self.floor:
                raise RollbackError(f"generation {cand.generation} is below the anti-rollback floor {self.floor}")
            return open_checkpoint(
                self.store.storage, record, self.store.trust, self.store.config.model, self.store.limits
            )
        except (ApplianceError, StorageError) as exc:
            self._refuse(cand.slot, cand.generation, record.manifest_digest.hex, exc)
            return None

    # --- outcomes ----------------------------------------------------------------------

    def _serve(self, opened: OpenCheckpoint, handoff: Handoff, trial: Trial) -> BootOutcome:
        t0 = self.ctx.clock()
        digest = _digest(opened)
        self._save(ss.mark_good(self.states.load(opened.slot), opened.generation, digest, _utc()))
        self._emit("slot.marked_good", opened, manifest_digest=digest)
        self._raise_floor()
        self.ctx.run.write_handoff(replace(handoff, admit=Admit.SELF))
        self.ctx.probe.admit(handoff.boot_id)
        o = self.outcome
        o.serving = {"slot": opened.slot, "generation": opened.generation, "manifest_digest": digest,
                     **_authorization(opened)}  # fmt: skip
        o.restore = trial.report.restore if trial.report else None
        o.replay = trial.report.replay if trial.report else None  # a stopped replay still serves, and says so
        fetched = {k: o.stages[k] for k in ("second_site_s",) if k in o.stages}
        o.stages = {"discover_s": o.stages.get("discover_s", 0.0), **fetched, **_service_stages(trial)}
        o.stages["mark_s"] = self.ctx.clock() - t0
        o.stages["total_s"] = self.ctx.clock() - self.started
        self._emit("boot.serving", opened, total_s=round(o.stages["total_s"], 3), stages=o.to_dict()["stages"],
                   restore=o.restore, replay=o.replay, fallbacks=len(o.failures))  # fmt: skip
        sd_notify("READY=1", f"STATUS=serving {opened.slot}/{opened.generation}")
        return o

    def _recover(self, reason: str, error: type[ApplianceError]) -> BootOutcome:
        self.ctx.control.stop(self.ctx.config.service_program)
        self.ctx.run.clear_handoff()
        info = {"reason": reason, "failures": self.outcome.failures, "entered": _utc(), "floor": self.floor}
        self.ctx.run.write_recovery(info)
        self.ctx.events.emit("recovery.entered", reason=reason, failures=self.outcome.failures, floor=self.floor)
        sd_notify("READY=1", f"STATUS=recovery mode: {reason}")
        self.outcome.recovery = reason
        self.outcome.exit_code = error.exit_code
        self.outcome.stages["total_s"] = self.ctx.clock() - self.started
        return self.outcome

    def _key_unavailable(self, opened: OpenCheckpoint, detail: str, error: type[ApplianceError]) -> BootOutcome:
        """The store's key cannot be obtained (design §14.7): a node fault, recovery "key unavailable", no mark."""
        self.outcome.failures.append(f"{opened.slot}/gen {opened.generation}: {detail}")
        return self._recover("key unavailable", error)

    def _give_back_attempt(self, opened: OpenCheckpoint) -> None:
        state = self.states.load(opened.slot)
        if state.is_candidate(opened.generation, _digest(opened)) and state.attempts > 0:
            self._save(replace(state, attempts=state.attempts - 1))

    def _node_fault(self, opened: OpenCheckpoint, trial: Trial) -> BootOutcome:
        """The node failed the trial (a port held by someone else): no checkpoint blamed, no recovery mode.

        The attempt is given back, the service stopped, and boot exits 65 (``ServiceError``) for
        systemd's ``Restart=on-failure`` (or the guard) to retry with backoff; nothing a technician must do.
        """
        self.ctx.control.stop(self.ctx.config.service_program)
        self.ctx.run.clear_handoff()
        self._give_back_attempt(opened)
        self.outcome.failures.append(f"{opened.slot}/gen {opened.generation}: node fault ({trial.node_fault}): "
                                     f"{trial.reason}")  # fmt: skip
        sd_notify(f"STATUS=node fault ({trial.node_fault}): {trial.reason}; retrying")
        self.outcome.exit_code = ServiceError.exit_code
        self.outcome.stages["total_s"] = self.ctx.clock() - self.started
        return self.outcome

    def _model_fault(self, opened: OpenCheckpoint, trial: Trial) -> BootOutcome:
        """A model or service fault (blame table, docs/boot.md §2): no slot marked, recovery info, exit 65."""
        if trial.phase in BLAMELESS_PHASES:
            what = f"the model service fails before it restores anything: {trial.reason}"
        else:
            what = (
                f"the model or node cannot use the intact checkpoint {opened.slot}/{opened.generation}: {trial.reason}"
            )
        self._save(
            ss.node_fault(self.states.load(opened.slot), opened.generation, _digest(opened), trial.reason, _utc())
        )
        self._emit("boot.node_fault", opened, phase=trial.phase, reason=trial.reason)
        self._emit("fallback.taken", opened, reason=trial.reason)
        return self._recover(what, ServiceError)

    def _fall_back(self, opened: OpenCheckpoint, reason: str) -> None:
        self.outcome.failures.append(f"{opened.slot}/gen {opened.generation}: {reason}")
        state = ss.mark_bad(self.states.load(opened.slot), opened.generation, _digest(opened), reason, _utc())
        self._save(state)
        self._emit("slot.marked_bad", opened, reason=reason)
        self._emit("fallback.taken", opened, reason=reason)

    def _refuse(self, slot: str, generation: int, digest: str | None, exc: ApplianceError | StorageError) -> None:
        problem = getattr(exc, "problem", str(exc))
        self.outcome.failures.append(f"{slot}/gen {generation}: {type(exc).__name__}: {problem}")
        self.ctx.events.emit(
            "checkpoint.refused", slot=slot, generation=generation, error=type(exc).__name__, problem=problem
        )
        state = self.states.load(slot)
        refused = ss.refuse(state, generation, digest, f"{type(exc).__name__}: {problem}", _utc())
        if refused != state:
            self._save(refused)

    # --- helpers -----------------------------------------------------------------------

    def _read_floor(self) -> int:
        try:
            return self.floor_store.read()
        except FloorUnreadableError as exc:  # missing or damaged: rebuilt, never 0 (fail closed)
            floor = ss.floor_after_good(0, (r.state for r in self.states.read_all().values()))
            event = "floor.missing" if isinstance(exc, FloorMissingError) else "floor.damaged"
            self.ctx.events.emit(event, reason=str(exc), floor=floor)
            self.floor_damaged = True
            return floor

    def _raise_floor(self) -> None:
        new = ss.floor_after_good(self.floor, (r.state for r in self.states.read_all().values()))
        if self.floor_damaged:  # rewrite the damaged store with the value rebuilt from the slot states
            self.floor = self.floor_store.raise_to(self.floor)
            self.floor_damaged = False
        if new > self.floor:
            stored = self.floor_store.raise_to(new)
            self.ctx.events.emit("floor.raised", old=self.floor, new=stored)
            self.floor = stored

    def _save(self, state: ss.SlotState) -> ss.SlotState:
        """Persist a transition; a slot whose state cannot be written is reported, never fatal."""
        try:
            self.states.write(state)
        except (ApplianceError, StorageError) as exc:
            self.ctx.events.emit("slot.unavailable", slot=state.slot, reason=f"state not recorded: {exc}")
        return state

    def _emit(self, name: str, opened: OpenCheckpoint, **fields: Any) -> None:
        self.ctx.events.emit(name, slot=opened.slot, generation=opened.generation, **_authorization(opened), **fields)

    def _add_stage(self, name: str, seconds: float) -> None:
        self.outcome.stages[name] = self.outcome.stages.get(name, 0.0) + seconds


def _authorization(opened: OpenCheckpoint) -> dict[str, Any]:
    """Signer role and release base of a checkpoint, for events and the boot outcome (issue 10)."""
    p = opened.authorization
    return {"signer_role": p.role, "release_base": p.release_base.generation, "device": p.device}


def _digest(opened: OpenCheckpoint) -> str:
    return opened.record.manifest_digest.hex


def _service_stages(trial: Trial) -> dict[str, float]:
    """Seconds per stage, in boot order: boot's view of the service start, then its own breakdown.

    ``process_start_s`` is interpreter + imports (torch) up to the model build; ``restore_*_cpu_s``
    are summed over restore workers, so together they can exceed ``restore_s`` (wall time).
    A standby's (§14) ``standby_wait_s`` is how long it waited, built, for the handoff; its
    ``service_start_s`` counts from the handoff, so it excludes what the standby did before.
    """
    out = {"service_start_s": trial.seconds.get("service_start_s", 0.0)}
    report = trial.report
    t = report.timings if report else {}
    if "loading" in t and "restoring" in t:
        out["process_start_s"] = t["loading"]
        out["model_build_s"] = t.get("standby", t["restoring"]) - t["loading"]
    if "standby" in t and "handoff" in t:
        out["standby_wait_s"] = t["handoff"] - t["standby"]
    if "restoring" in t and "restored" in t:
        replay_from = t.get("replaying", t["restored"])  # the journal replay (issue 17), when there is one
        out["restore_s"] = replay_from - t["restoring"]
        if "replaying" in t:
            out["replay_s"] = t["restored"] - t["replaying"]
    stats = (report.restore if report else None) or {}
    for stage, seconds in (stats.get("stage_seconds") or {}).items():
        if seconds:
            out[f"restore_{stage}_cpu_s"] = float(seconds)
    out["canary_s"] = trial.seconds.get("canary_s", 0.0)
    return out


def recover_early(config: NodeConfig, run: RunDir, control: ServiceControl, events: EventLog, reason: str) -> None:
    """Recovery mode when boot cannot even open the store (missing store.json, damaged trust store)."""
    control.stop(config.service_program)
    run.clear_handoff()
    run.write_recovery({"reason": reason, "failures": [], "entered": _utc(), "floor": None})
    events.emit("recovery.entered", reason=reason, failures=[], floor=None)
    sd_notify("READY=1", f"STATUS=recovery mode: {reason}")
