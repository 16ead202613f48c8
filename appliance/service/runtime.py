"""The model service's state: phase, model, restore result, and the operations the HTTP app calls.

Owns: ``ServiceRuntime`` — bringing the service up in a background thread (read handoff ->
build model -> [standby until boot writes the handoff] -> verified restore -> wait for
admission), the phase machine (loading -> [standby ->] restoring -> restored -> serving, or
failed), the model lock, and inference, canary, adaptation and export on the model. Does not
own HTTP (``app``) or the process (``server``). Every phase change is written to the run directory's service report.

Admission: after a restore the service answers only the canary until boot admits it (the
first restore of a boot), or admits itself when the handoff says the checkpoint was already
proven GOOD (supervisord restarted the service).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from appliance.errors import ApplianceError, KeyUnavailableError, ServiceError, StorageError, UsageError
from appliance.events import EventLog
from appliance.format.handoff import KEY_FAULT, Admit, Handoff, Phase, ServiceReport
from appliance.node.config import NodeConfig
from appliance.node.identity import open_node_store
from appliance.node.rundir import RunDir
from appliance.service import export, loader
from appliance.service.early import EarlyRestore, await_handoff
from appliance.service.journaling import ServiceJournal
from appliance.service.modellock import ModelLock
from appliance.service.restore import Restored, adopt_early, restore_into_model


class NotAvailableError(Exception):
    """The request cannot be served in the current phase (HTTP 503) or conflicts (409)."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ServiceRuntime:
    def __init__(
        self,
        config: NodeConfig,
        run: RunDir | None = None,
        events: EventLog | None = None,
        started: float | None = None,
        early: EarlyRestore | None = None,
    ) -> None:
        self.config = config
        self.early = early  # the restore started before torch was imported (model_init meta)
        self.run = run or RunDir(config.run_dir)
        self.events = events or EventLog(config.event_log, "service")
        from appliance.service.metrics import ServiceMetrics

        self.metrics = ServiceMetrics(self)  # served on the control channel only (GET /v1/metrics)
        self.model_lock = ModelLock()  # shared: inference, capture; exclusive: adaptation (modellock.py)
        self.request_lock = threading.Lock()  # inference requests run one at a time, as before
        self.export_lock = threading.Lock()
        self.writer = export.Writer(config.persist_nice)  # export writes below serving priority (issue 16 goal 3)
        self.model: nn.Module | None = None
        self.phase = Phase.LOADING
        self.handoff: Handoff | None = None
        self.restored: Restored | None = None
        self.error: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.stop_server: Callable[[], None] = lambda: None
        self._started = time.monotonic() if started is None else started  # process start, for phase timings
        self.timings: dict[str, float] = {}
        self.receipts: OrderedDict[str, dict[str, Any]] = OrderedDict()  # exports this process wrote
        self.changed = False  # adapted since the restore or the last export
        self._last_receipt: dict[str, Any] | None = None
        self.journal: ServiceJournal | None = None  # with node.json journal_dir (issue 17)
        self.replay: dict[str, Any] | None = None  # what the journal replay did (reported to boot)

    # --- bring-up ----------------------------------------------------------------------

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.bring_up, name="restore", daemon=True)
        thread.start()
        return thread

    def bring_up(self) -> None:
        try:
            self.handoff = self.early.handoff if self.early else self.run.read_handoff()
            self._enter(Phase.LOADING)
            built = loader.build(self.config.model, self.config.model_init)
            if self.config.journal_dir:
                self.journal = ServiceJournal(self.config, self.events)  # key and directory: before any restore
            handoff = self.handoff or self._await_handoff(built)
            self._enter(Phase.RESTORING)
            restored = self._restore(built, handoff)
            self._emit_restored(restored, built.init)
            if self.journal is not None:
                self._enter(Phase.REPLAYING)
                recovery = self.journal.recover(built.model, restored)
                self.changed = recovery.replayed > 0
                self.replay = self.journal.summary(recovery)
            self.model, self.restored = built.model, restored
            self._enter(Phase.RESTORED)
            if handoff.admit is Admit.SELF:
                self._serve("self")
        except ApplianceError as exc:
            self._fail(exc)
        except Exception as exc:  # a model or library bug must still end in a report and an exit code
            self._fail(ServiceError(f"unexpected {type(exc).__name__} while {self.phase.value}: {exc}"))

    def _await_handoff(self, built: loader.BuiltModel) -> Handoff:
        """Standby (docs/boot.md §14): imported and built, wait for boot's handoff; nothing restored or served.

        The early restore's thread (model_init meta) is already waiting for it and restores the
        moment it appears; otherwise the run directory is polled every ``HANDOFF_POLL_S``.
        """
        self._enter(Phase.STANDBY)
        if self.early is None:
            handoff, handed_at = await_handoff(self.run)
        else:
            handoff, handed_at = self.early.wait_handoff(), self.early.handed_at
        self.handoff = handoff
        self.timings["handoff"] = round(handed_at - self._started, 6)
        return handoff

    def _restore(self, built: loader.BuiltModel, handoff: Handoff) -> Restored:
        """The verified restore: the early one's buffers for a meta-built model, else in place."""
        early, self.early = self.early, None
        if early is not None and built.init == "meta" and early.handoff == handoff:
            return adopt_early(early, built.model)
        if early is not None:
            early.discard()
        store = open_node_store(self.config)
        return restore_into_model(store, handoff, built.model, self.config.restore_workers or None)

    def _emit_restored(self, restored: Restored, model_init: str) -> None:
        stats = restored.stats.to_dict()
        self.events.emit(
            "restore.finished",
            slot=restored.opened.slot,
            generation=restored.opened.generation,
            raw_bytes=stats["raw_bytes"],
            seconds=stats["seconds"],
            stats=stats,
            model_init=model_init,
        )

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.timings[phase.value] = round(time.monotonic() - self._started, 6)
        self._report()

    def _report(self) -> None:
        report = ServiceReport(
            pid=os.getpid(),
            phase=self.phase,
            handoff=self.handoff,
            updated=_utc(),
            error=self.error,
            restore=self.restored.stats.to_dict() if self.restored else None,
            timings=dict(self.timings),
            replay=self.replay,
        )
        try:
            self.run.write_report(report)
        except (ApplianceError, StorageError, OSError) as exc:
            print(f"appliance serve: cannot write the service report: {exc}", file=sys.stderr)

    def _fail(self, exc: ApplianceError) -> None:
        failed_in = self.phase
        self.error = exc.to_dict() | {"phase": failed_in.value}
        if isinstance(exc, KeyUnavailableError):  # the node's key provider, never the checkpoint (design §14.7)
            self.error["node_fault"] = KEY_FAULT
        h = self.handoff
        where = {"slot": h.slot if h else "-", "generation": h.generation if h else 0}
        if failed_in is Phase.RESTORING:
            self.events.emit("restore.failed", **where, error=type(exc).__name__, problem=exc.problem)
        else:
            self.events.emit("service.failed", **where, phase=failed_in.value, detail=exc.problem)
        self._enter(Phase.FAILED)
        self.exit_code = exc.exit_code
        self.stop_server()

    def _serve(self, by: str) -> None:
        h = self.restored.opened if self.restored else None
        self._enter(Phase.SERVING)
        self.events.emit("service.admitted", slot=h.slot if h else "-", generation=h.generation if h else 0, by=by)

    # --- operations --------------------------------------------------------------------

    def _model_in(self, *phases: Phase) -> nn.Module:
        if self.phase not in phases or self.model is None:
            raise NotAvailableError(f"not serving: the service is {self.phase.value}")
        return self.model

    def _run(self, model: nn.Module, inputs: list[Any]) -> list[Any]:
        x = torch.tensor(inputs, dtype=torch.float32)
        with self.request_lock, self.model_lock.shared, torch.inference_mode():
            out: list[Any] = model(x).tolist()
        return out

    def infer(self, inputs: list[Any]) -> list[Any]:
        return self._run(self._model_in(Phase.SERVING), inputs)

    def canary(self, inputs: list[Any]) -> list[Any]:
        model = self._model_in(Phase.RESTORED, Phase.SERVING)
        before = self.journal.canary_before if self.journal else None
        if before is not None and self.phase is Phase.RESTORED and inputs == before[0]:
            return before[1]  # the checkpoint's canary, answered by the restored state before replay
        return self._run(model, inputs)

    def admit(self, boot_id: str) -> None:
        self._model_in(Phase.RESTORED, Phase.SERVING)
        if self.handoff is None or boot_id != self.handoff.boot_id:
            raise NotAvailableError("admission from a boot that did not start this service", status=409)
        if self.phase is Phase.RESTORED:
            self._serve("boot")

    def adapt(self, inputs: list[list[float]], targets: list[list[float]]) -> dict[str, Any]:
        model = self._model_in(Phase.SERVING)
        x, y = torch.tensor(inputs, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)
        if self.journal is not None:
            self.changed = True
            result = self.journal.step(model, self.model_lock.exclusive, x, y, self._forced_persist)
            if result is None:
                raise UsageError("this model does not adapt online (it has no adapt() method)")
            return result
        with self.model_lock.exclusive:
            self.changed = True
            result = loader.adapt(model, x, y)
        if result is None:
            raise UsageError("this model does not adapt online (it has no adapt() method)")
        return result

    def export(self) -> dict[str, Any]:
        """Capture the state (short pause) and write it into the outbox (no pause); returns its receipt.

        An unchanged state (no adaptation since the restore or the last export) writes nothing and
        answers ``{"unchanged": true}``; a state holding NaN or Infinity is refused (``ExportFileError``).
        """
        model = self._model_in(Phase.SERVING)
        with self.export_lock:
            with self.model_lock.exclusive:
                changed, self.changed = self.changed, False
            if not changed:
                self.events.emit("state.unchanged", step=loader.adaptation_step(model), reason="no adaptation since "
                                 + ("the last export" if self._last_receipt else "the restore"))  # fmt: skip
                return {"unchanged": True, "previous": self._last_receipt}
            try:
                buffers = self.writer.call(lambda: export.touched_buffers(model))  # page faults: lowered too
                at_capture = self.journal.capture_point if self.journal else None
                snapshot = export.capture(model, self.model_lock.shared, at_capture, buffers)
                result = self.writer.run(snapshot, self.config.outbox, self.config.model, self._source())
            except BaseException:
                self.changed = True  # nothing was exported: the next request tries again
                raise
            data = result.to_dict()
            receipt = data | {"content_sha256": result.info.content_sha256, "source": self._source(),
                              "boot_id": self.handoff.boot_id if self.handoff else None,
                              "journal": result.info.journal}  # fmt: skip
            self._remember(receipt)  # under the export lock: receipt() waits for an export in flight
        self.events.emit("state.exported", **data)
        return receipt

    def _forced_persist(self) -> None:
        """The journal reached its cap: export now, so the watchdog commits and the journal rotates."""
        try:
            self.export()
        except (ApplianceError, NotAvailableError, OSError) as exc:
            self.events.emit("persist.failed", file="(journal cap export)", error=type(exc).__name__,
                             problem=getattr(exc, "problem", str(exc)), attempt=1, retry_in_s=0)  # fmt: skip
            if self.journal is not None:
                self.journal.forcing.clear()

    def journal_checkpointed(self, slot: str, generation: int) -> dict[str, Any]:
        """A checkpoint was committed (persist says so): trim what it covers, once verified here."""
        if self.journal is None:
            return {"removed": [], "reason": "no journal"}
        return self.journal.checkpointed(slot, generation)

    def _remember(self, receipt: dict[str, Any]) -> None:
        self.receipts[receipt["file"]] = receipt
        while len(self.receipts) > 64:
            self.receipts.popitem(last=False)
        self._last_receipt = receipt

    def receipt(self, name: str) -> dict[str, Any] | None:
        """What this process wrote under outbox file ``name`` (persist's proof of authorship).

        Waits for an export in flight: the watchdog may see the file before ``export`` returns.
        """
        with self.export_lock:
            return self.receipts.get(name)

    def _source(self) -> dict[str, Any] | None:
        if self.restored is None:
            return None
        o = self.restored.opened
        return {"slot": o.slot, "generation": o.generation, "manifest_digest": o.record.manifest_digest.hex}

    def public_health(self) -> dict[str, Any]:
        """What the network may know: phase, which checkpoint, restore stats — no boot id, pid or paths."""
        opened = self.restored.opened if self.restored else None
        return {
            "phase": self.phase.value,
            "slot": opened.slot if opened else None,
            "generation": opened.generation if opened else None,
            "restore": self.restored.stats.to_dict() if self.restored else None,
            "timings": dict(self.timings),
            "error": self.error.get("error") if self.error else None,
        }

    def health(self) -> dict[str, Any]:
        """Everything, for the control channel: the handoff (with its boot id), pid and the full error."""
        return {
            "phase": self.phase.value,
            "pid": os.getpid(),
            "handoff": self.handoff.to_dict() if self.handoff else None,
            "restore": self.restored.stats.to_dict() if self.restored else None,
            "timings": dict(self.timings),
            "error": self.error,
        }
