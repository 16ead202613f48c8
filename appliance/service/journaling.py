"""The model service's side of the adaptation journal: open it, replay at start, journal each step.

Owns: ``ServiceJournal`` — loading the journal MAC key (created on first use when its directory
is writable: a development node; production provisions it), opening ``journal_dir``, the
replay after the verified restore (with the checkpoint's canary answered on the restored state
first, ``canary_before``), the live step (under the model lock: refuse when the journal is
full, run the step seeded and deterministic, append its record; outside the lock: wait for the
group's fsync before the caller is answered), the capture hook that rotates the segment when
a state is exported, forcing a persist at the cap, and trimming the journal once a checkpoint
that covers it is committed and verified. Does not own the format or files (``appliance.journal``).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from appliance.errors import ApplianceError, JournalFullError, JournalKeyError
from appliance.events import EventLog
from appliance.format.canary import Canary
from appliance.format.journal import Point
from appliance.journal import sealing
from appliance.journal import step as steps
from appliance.journal.files import LocalJournalFiles
from appliance.journal.journal import Journal, Recovery
from appliance.journal.keyfile import create_journal_key, load_journal_key
from appliance.node.config import NodeConfig
from appliance.node.identity import open_node_store
from appliance.service import loader
from appliance.service.restore import Restored
from appliance.sources.export import tensors_digest
from appliance.store.discovery import open_checkpoint, scan
from appliance.store.store import Store


def journal_key(config: NodeConfig) -> bytes:
    path = Path(config.journal_key_file())
    if not path.exists():
        try:
            create_journal_key(path)
        except JournalKeyError as exc:
            raise JournalKeyError(
                f"no journal key at {path} and it cannot be created here: {exc.problem}",
                remedy=f"provision it as the service's user: `appliance journal key --config NODE.json` ({path})",
            ) from exc
    return load_journal_key(path)


class ServiceJournal:
    def __init__(self, config: NodeConfig, events: EventLog) -> None:
        self.config, self.events = config, events
        self.key = journal_key(config)
        self.journal = Journal(LocalJournalFiles(config.journal_dir), self.key, events, model=config.model,
                               group_commit_s=config.journal_group_commit_ms / 1000.0,
                               max_bytes=config.journal_max_bytes, threads=config.adapt_threads)  # fmt: skip
        self.canary_before: tuple[list[Any], list[Any]] | None = None
        self.forcing = threading.Event()
        self.rng = random.SystemRandom()

    def recover(self, model: nn.Module, restored: Restored) -> Recovery:
        meta = restored.metadata
        digest = meta.get("content_sha256")
        if not isinstance(digest, str):
            digest = tensors_digest(model.state_dict())
        point = Point.from_metadata(meta)
        self._answer_canary_before(model, meta)

        def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, Any] | None:
            return loader.adapt(model, x, y)

        # an encrypted store seals the journal under its data key (design §15.1); known only now, restored
        self.journal.sealing = sealing.for_store(open_node_store(self.config))
        # replay scopes deterministic mode per segment (journal.py); setting it here leaked it process-wide
        return self.journal.recover(point, digest, restored.opened.generation, step,
                                    lambda: loader.adaptation_step(model))  # fmt: skip

    def summary(self, rec: Recovery) -> dict[str, Any]:
        """The replay as the service reports it to boot (``ServiceReport.replay``): where set-aside records went."""
        return rec.summary() | {"retired_dir": str(Path(self.config.journal_dir) / "retired")}

    def _answer_canary_before(self, model: nn.Module, meta: dict[str, Any]) -> None:
        """The checkpoint's canary answered by the restored state, before replay changes it (docs/boot.md §13)."""
        try:
            canary = Canary.from_metadata(meta)
        except ApplianceError:
            return
        if canary is None:
            return
        try:
            with torch.inference_mode():
                out = model(torch.tensor(canary.input, dtype=torch.float32)).tolist()
        except Exception:  # the model cannot take it: boot's canary request finds out the same way
            return
        self.canary_before = (canary.input, out)

    def step(self, model: nn.Module, lock: AbstractContextManager[Any], x: torch.Tensor, y: torch.Tensor,
             on_cap: Callable[[], None]) -> dict[str, Any] | None:  # fmt: skip
        """One adaptation step, journaled ahead (J1); returns once its record is durable (J2, the acknowledgement)."""
        j = self.journal
        with lock:
            if j.full:
                raise JournalFullError(
                    f"the journal holds {j.total_bytes} bytes, twice journal_max_bytes ({j.max_bytes}), and no "
                    "persist has committed: adaptation waits rather than drop records"
                )
            if not loader.adapts(model):
                return None
            seed, before = self.rng.getrandbits(63), loader.adaptation_step(model)

            def run() -> dict[str, Any]:
                with steps.deterministic(self.config.adapt_threads), steps.seeded(seed):
                    return loader.adapt(model, x, y) or {}

            index, result = j.record_step(seed, before, x, y, run)  # written ahead: its fsync overlaps the step
        j.wait(index)
        if j.over_cap and not self.forcing.is_set():
            self.forcing.set()
            self.events.emit("journal.cap_reached", bytes=j.total_bytes, max_bytes=j.max_bytes)
            threading.Thread(target=on_cap, name="journal-cap-persist", daemon=True).start()
        return result

    def capture_point(self) -> Point:
        return self.journal.capture_point()

    def checkpointed(self, slot: str, generation: int) -> dict[str, Any]:
        """Trim the journal up to the journal point of a committed checkpoint, after verifying it."""
        store = Store.open(self.config.store, trust_path=self.config.trust_file())
        found = scan(store.storage, store.limits)
        record = next((r.record for r in found.records if r.slot == slot and r.generation == generation
                       and r.record is not None), None)  # fmt: skip
        if record is None:
            return {"removed": [], "reason": f"no committed checkpoint {slot}/{generation}"}
        opened = open_checkpoint(store.storage, record, store.trust, store.config.model, store.limits)
        point = Point.from_metadata(dict(opened.verified.manifest.metadata))
        if point is None:
            return {"removed": [], "reason": "the checkpoint names no journal point"}
        removed = self.journal.checkpointed(point)
        if not self.journal.over_cap:
            self.forcing.clear()
        return {"removed": removed, "point": point.to_dict(), "bytes": self.journal.total_bytes}

    def close(self) -> None:
        self.journal.close()
