"""The real boot supervisor (``appliance.boot.sequence``) as the fault suites' boot.

Everything the supervisor decides runs for real: candidate walk, refusals, the durable attempt
counter, GOOD/BAD marks in ``{A,B}/state.json`` (written through the storage under test, so
power cuts hit them too), the anti-rollback floor and recovery mode. Two stand-ins remain:
supervisord + the model service are replaced by ``InProcessService``, which performs the real
verified restore (``restore_into``) of exactly the handed-off checkpoint in this process, and
the run directory, event log and floor file live in a throwaway directory (tmpfs when there is
one) — they are not on the store's disk, so they are not crash-tested here.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.boot.control import ProcessInfo
from appliance.boot.sequence import BootContext, BootOutcome, boot
from appliance.errors import ApplianceError, StorageError
from appliance.events import EventLog
from appliance.format.handoff import Phase, ServiceReport
from appliance.node.config import NodeConfig
from appliance.node.floor import FileFloor, GenerationFloor
from appliance.node.rundir import RunDir
from appliance.signing import TrustStore
from appliance.storage import Storage
from appliance.store.bootstate import SlotStates
from appliance.store.config import StoreConfig
from appliance.store.discovery import open_checkpoint
from appliance.store.restore import restore_into
from appliance.store.slot import SlotReader
from appliance.store.store import Store

from .model import contents_digest

_SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


@dataclass
class InProcessService:
    """supervisord + model service in one object: ``start`` restores the handed-off checkpoint."""

    run: RunDir
    store: Store
    state: str = "STOPPED"
    pid: int = 1000
    restored: dict[tuple[str, int], str] = field(default_factory=dict)  # (slot, gen) -> contents digest

    def start(self, name: str) -> None:
        handoff = self.run.read_handoff()
        assert handoff is not None
        self.pid += 1
        self.state = "RUNNING"
        try:
            digest = self._restore(handoff.slot, handoff.generation)
        except (ApplianceError, StorageError) as exc:
            error = {"error": type(exc).__name__, "problem": exc.problem, "phase": Phase.RESTORING.value}
            self.run.write_report(ServiceReport(self.pid, Phase.FAILED, handoff, "t", error=error))
            self.state = "EXITED"
            return
        self.restored[(handoff.slot, handoff.generation)] = digest
        self.run.write_report(ServiceReport(self.pid, Phase.RESTORED, handoff, "t"))

    def _restore(self, slot: str, generation: int) -> str:
        storage = self.store.storage
        outcome = next(r for r in SlotReader(storage, slot).records() if r.generation == generation)
        if outcome.record is None:
            raise outcome.error or StorageError("record vanished")
        opened = open_checkpoint(storage, outcome.record, self.store.trust, self.store.config.model)
        manifest = opened.verified.manifest
        dest = {t.name: np.zeros(t.nbytes, np.uint8) for t in manifest.tensors}
        restore_into(storage, opened, dest, workers=1)
        return contents_digest({name: a.tobytes() for name, a in dest.items()})

    def stop(self, name: str) -> None:
        self.state = "STOPPED"

    def info(self, name: str) -> ProcessInfo:
        return ProcessInfo(name, self.state, self.pid if self.state == "RUNNING" else 0, 0)

    def canary(self, inputs: list[Any]) -> Any:
        raise AssertionError("fault-suite checkpoints carry no canary")

    def admit(self, boot_id: str) -> None:
        pass


def run_supervisor(
    storage: Storage, config: StoreConfig, trust: TrustStore, floor: GenerationFloor | None = None
) -> tuple[BootOutcome, dict[tuple[str, int], str]]:
    """Run ``appliance boot``'s sequence on ``storage``; returns its outcome and what was restored.

    ``floor``: the anti-rollback floor store (default: a fresh file, i.e. floor 0).
    """
    with tempfile.TemporaryDirectory(dir=_SCRATCH) as tmp:
        node = Path(tmp)
        for slot in ("A", "B"):  # slot availability is checked on the real file system
            (node / "store" / slot).mkdir(parents=True)
        node_config = NodeConfig(
            store=str(node / "store"),
            run_dir=str(node / "run"),
            event_log=str(node / "events.jsonl"),
            floor_file=str(node / "floor.json"),
            ready_timeout=60,
        )
        store = Store(storage, config, trust)
        run = RunDir(node_config.run_dir)
        service = InProcessService(run, store)
        ctx = BootContext(
            config=node_config,
            run=run,
            control=service,
            probe=service,
            events=EventLog(node_config.event_log, "boot", journal=None),
            store=store,
            states=SlotStates(storage),
            floor=floor or FileFloor(node_config.floor_file),
            poll=0.0,
        )
        return boot(ctx), service.restored
