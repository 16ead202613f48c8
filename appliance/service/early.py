"""The verified restore started before torch is imported, overlapping the service's start (issue 16).

Owns: ``EarlyRestore`` — with ``model_init: meta`` the service starts the verified restore of
the handed-off checkpoint in a thread *before* it imports torch and builds the model: every
tensor is restored (every frame SHA-256-checked before use, as always) into a plain byte
buffer; once the model is built on the meta device, ``adopt`` checks that the model's tensors
fit the checkpoint and gives the model those buffers as its tensors (``load_state_dict(...,
assign=True)``: no copy, no uninitialised memory first). So a boot pays about
``max(interpreter + torch import + model build, verified restore)`` instead of their sum.
Also owns ``open_handoff`` (shared with ``service.restore``).

A standby service (docs/boot.md §14: started before boot wrote any handoff) starts it with no
handoff: the thread then polls the run directory every ``HANDOFF_POLL_S`` and restores the
moment boot's handoff appears, even while torch is still being imported.

Priority: the import is one thread on the critical path, the restore is parallel, so the
early restore runs at niceness ``EARLY_RESTORE_NICE`` (and the matching lower I/O priority;
``node.priority``): on few cores the import keeps a core and the restore takes the rest. It
matters only under contention; once torch is loaded the restore has the CPUs to itself.

Torch-free at import (it runs while torch loads). Not used when the model is built any other
way (``factory``, or ``meta`` refused): then the buffers are dropped and the restore runs in
place as before (``service.restore``), which fills tensors of any layout and checks tied
tensors; ``meta`` is only used for models whose every tensor is its own ``state_dict`` entry
(``loader.restore_does_not_cover``), so assigning loses nothing. Failures keep their blame: an
error of the restore is raised from ``adopt``, which the service calls in its restoring phase.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from appliance.codec.transform import U8
from appliance.errors import CheckpointNotFoundError, ManifestError
from appliance.format.handoff import Handoff
from appliance.node.config import NodeConfig
from appliance.node.identity import open_node_store
from appliance.node.priority import lower_priority
from appliance.node.rundir import RunDir
from appliance.store.discovery import OpenCheckpoint, open_checkpoint
from appliance.store.restore import RestoreStats, restore_into
from appliance.store.slot import SlotReader
from appliance.store.store import Store


def open_handoff(store: Store, handoff: Handoff) -> OpenCheckpoint:
    """The checkpoint ``handoff`` names, re-opened (record, bundle, signature, model id, frame presence)."""
    reader = SlotReader(store.storage, handoff.slot, store.limits)
    reader.require_available()
    outcome = next((r for r in reader.records() if r.generation == handoff.generation), None)
    if outcome is None:
        raise CheckpointNotFoundError(f"slot {handoff.slot} holds no generation {handoff.generation}")
    if outcome.record is None:
        raise outcome.error or ManifestError(f"commit record of {handoff.slot}/{handoff.generation} is unreadable")
    opened = open_checkpoint(store.storage, outcome.record, store.trust, store.config.model, store.limits)
    if opened.record.manifest_digest.hex != handoff.manifest_digest:
        raise ManifestError(
            f"{handoff.slot}/{handoff.generation} is not the checkpoint boot chose (manifest digest differs)"
        )
    return opened


@dataclass
class EarlyResult:
    opened: OpenCheckpoint | None = None
    buffers: dict[str, U8] = field(default_factory=dict)
    stats: RestoreStats | None = None
    error: BaseException | None = None


# The early restore yields the CPU (and disk) to the torch import it overlaps, but not to the
# persistence watchdog's start (persist_nice, 10 by default).
EARLY_RESTORE_NICE = 5
HANDOFF_POLL_S = 0.01  # how often a standby looks for boot's handoff (a failed open(): microseconds)


def await_handoff(run: RunDir) -> tuple[Handoff, float]:
    """Poll ``run`` until boot's handoff appears: (handoff, ``time.monotonic()`` when read).

    An unreadable handoff reads as none (``RunDir.read_handoff``): boot writes atomically, so
    it is not boot's, and the poll goes on until boot's arrives.
    """
    handoff = run.read_handoff()
    while handoff is None:
        time.sleep(HANDOFF_POLL_S)
        handoff = run.read_handoff()
    return handoff, time.monotonic()


class EarlyRestore:
    """The handed-off checkpoint restored into byte buffers on a thread; ``result()`` waits for it.

    ``handoff`` None (a standby): the thread first waits for one in ``run``; ``wait_handoff``
    blocks until it has it, and ``handed_at`` is when (``time.monotonic``).
    """

    def __init__(self, config: NodeConfig, handoff: Handoff | None, run: RunDir | None = None) -> None:
        if handoff is None and run is None:
            raise ValueError("an early restore without a handoff needs the run directory to wait for one")
        self.config, self.handoff, self.run = config, handoff, run
        self.handed_at = time.monotonic() if handoff is not None else 0.0
        self._handed = threading.Event()
        self._result = EarlyResult()
        self._thread = threading.Thread(target=self._run, name="early-restore", daemon=True)

    def start(self) -> EarlyRestore:
        self._thread.start()
        return self

    def wait_handoff(self) -> Handoff:
        """Block until the thread has read boot's handoff; an error of the thread before then is raised here."""
        self._handed.wait()
        if self.handoff is None:
            raise self._result.error or ManifestError("the early restore ended without a handoff")
        return self.handoff

    def _await_handoff(self) -> Handoff:
        assert self.run is not None
        self.handoff, self.handed_at = await_handoff(self.run)
        return self.handoff

    def _run(self) -> None:
        out = self._result
        try:
            try:
                handoff = self.handoff or self._await_handoff()
            finally:
                self._handed.set()
            lower_priority(EARLY_RESTORE_NICE)  # this thread and the workers it starts (they inherit it)
            store = open_node_store(self.config)
            out.opened = open_handoff(store, handoff)
            tensors = out.opened.verified.manifest.tensors
            out.buffers = {t.name: np.empty(t.nbytes, dtype=np.uint8) for t in tensors}
            workers = self.config.restore_workers or None
            out.stats = restore_into(store.storage, out.opened, dict(out.buffers), workers=workers)
        except BaseException as exc:  # raised again, in the restoring phase, by whoever adopts the result
            out.error, out.buffers = exc, {}

    def result(self) -> EarlyResult:
        """Wait for the restore; its error (if any) is raised here, once."""
        self._thread.join()
        if self._result.error is not None:
            raise self._result.error
        return self._result

    def discard(self) -> None:
        """The model was built another way: wait for the thread (it owns the buffers), then drop them."""
        self._thread.join()
        self._result = EarlyResult()


def start_early_restore(config: NodeConfig, run: RunDir) -> EarlyRestore | None:
    """Start the early restore when the model will be built on the meta device.

    With a handoff in ``run`` it restores that; without one (a standby) it waits for boot's.
    """
    if config.model_init != "meta":
        return None
    try:
        handoff = run.read_handoff()
    except Exception:  # the service's bring-up reads it again and reports what is wrong
        return None
    return EarlyRestore(config, handoff, run).start()
