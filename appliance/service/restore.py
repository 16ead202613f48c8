"""Restore exactly the handed-off checkpoint into the model's own tensors, verifying every frame.

Owns: opening the checkpoint the handoff names (slot + generation + manifest digest must all
match), matching it to the model's ``state_dict()`` and restoring in place. Does not own
choosing the checkpoint (boot did, including the anti-rollback floor) or falling back (a
failure raises; the service exits and boot marks the checkpoint BAD).

Each frame is hashed exactly once on the boot path — here, just before it is decoded into the
model's memory (``appliance.store.restore``). Boot only checked records, signature and presence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from appliance.errors import CheckpointNotFoundError, ManifestError, ModelFaultError, TensorMismatchError
from appliance.format.handoff import Handoff
from appliance.sources.destinations import plan_destinations, restore_into_tensors
from appliance.store.discovery import OpenCheckpoint, open_checkpoint
from appliance.store.restore import RestoreStats
from appliance.store.slot import SlotReader
from appliance.store.store import Store


@dataclass
class Restored:
    opened: OpenCheckpoint
    stats: RestoreStats

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.opened.verified.manifest.metadata)


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


def restore_into_model(store: Store, handoff: Handoff, model: nn.Module, workers: int | None = None) -> Restored:
    """Restore into ``model.state_dict()`` (any layout, tied weights checked equal).

    A model whose tensors do not fit the checkpoint (names, dtypes, shapes, an aliasing
    conflict) is the model's fault, not the checkpoint's: ``ModelFaultError`` (boot blames no
    slot for it, docs/boot.md §4).
    """
    opened = open_handoff(store, handoff)
    entries = {t.name: t for t in opened.verified.manifest.tensors}
    state = model.state_dict()
    missing, extra = sorted(set(entries) - set(state)), sorted(set(state) - set(entries))
    try:
        if missing or extra:
            raise TensorMismatchError(
                f"checkpoint and model differ: only in checkpoint {missing[:5]}, only in model {extra[:5]}"
            )
        plan_destinations(opened.verified.manifest.tensors, state)
    except TensorMismatchError as exc:
        raise ModelFaultError(
            f"the model's tensors do not fit {handoff.slot}/{handoff.generation}: {exc.problem}",
            remedy="serve this checkpoint with the model it was made from (node.json 'model'); it is intact",
        ) from exc
    stats = restore_into_tensors(store.storage, opened, state, workers=workers)
    return Restored(opened, stats)
