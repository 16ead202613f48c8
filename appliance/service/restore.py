"""Restore exactly the handed-off checkpoint into the model's own tensors, verifying every frame.

Owns: opening the checkpoint the handoff names (slot + generation + manifest digest must all
match), matching it to the model's ``state_dict()`` and restoring in place. Does not own
choosing the checkpoint (boot did, including the anti-rollback floor) or falling back (a
failure raises; the service exits and boot marks the checkpoint BAD).

Each frame is hashed exactly once on the boot path — here, just before it is decoded into the
model's memory (``appliance.store.restore``). Boot only checked records, signature and presence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from appliance.errors import ModelFaultError, TensorMismatchError
from appliance.format.handoff import Handoff
from appliance.service.early import EarlyRestore, open_handoff
from appliance.sources.destinations import plan_destinations, restore_into_tensors
from appliance.sources.tensors import dtype_name, torch_dtype
from appliance.store.discovery import OpenCheckpoint
from appliance.store.restore import RestoreStats
from appliance.store.store import Store

__all__ = ["Restored", "adopt_early", "open_handoff", "restore_into_model"]


@dataclass
class Restored:
    opened: OpenCheckpoint
    stats: RestoreStats

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.opened.verified.manifest.metadata)


def restore_into_model(store: Store, handoff: Handoff, model: nn.Module, workers: int | None = None) -> Restored:
    """Restore into ``model.state_dict()`` (any layout, tied weights checked equal).

    A model whose tensors do not fit the checkpoint (names, dtypes, shapes, an aliasing
    conflict) is the model's fault, not the checkpoint's: ``ModelFaultError`` (boot blames no
    slot for it, docs/boot.md §4).
    """
    opened = open_handoff(store, handoff)
    state = model.state_dict()
    with _model_fault(opened):
        _same_names(opened, state)
        plan_destinations(opened.verified.manifest.tensors, state)
    stats = restore_into_tensors(store.storage, opened, state, workers=workers)
    return Restored(opened, stats)


def adopt_early(early: EarlyRestore, model: nn.Module) -> Restored:
    """Give a meta-built ``model`` the early restore's verified buffers as its tensors (no copy).

    Raises the restore's own error first (the checkpoint's fault), then ``ModelFaultError`` if the
    model's tensors do not fit the checkpoint (names, dtypes, shapes), as ``restore_into_model``.
    """
    done = early.result()
    assert done.opened is not None and done.stats is not None
    state = model.state_dict(keep_vars=True)
    tensors: dict[str, torch.Tensor] = {}
    with _model_fault(done.opened):
        _same_names(done.opened, state)
        for entry in done.opened.verified.manifest.tensors:
            mine = state[entry.name]
            if dtype_name(mine.dtype) != entry.dtype or tuple(mine.shape) != entry.shape:
                raise TensorMismatchError(
                    f"tensor {entry.name!r}: the model has {dtype_name(mine.dtype)} {tuple(mine.shape)}, "
                    f"the checkpoint {entry.dtype} {entry.shape}"
                )
            raw = torch.from_numpy(done.buffers[entry.name])
            tensors[entry.name] = raw.view(torch_dtype(entry.dtype)).reshape(entry.shape)
    model.load_state_dict(tensors, strict=True, assign=True)
    return Restored(done.opened, done.stats)


def _same_names(opened: OpenCheckpoint, state: dict[str, torch.Tensor]) -> None:
    names = {t.name for t in opened.verified.manifest.tensors}
    missing, extra = sorted(names - set(state)), sorted(set(state) - names)
    if missing or extra:
        raise TensorMismatchError(
            f"checkpoint and model differ: only in checkpoint {missing[:5]}, only in model {extra[:5]}"
        )


@contextmanager
def _model_fault(opened: OpenCheckpoint) -> Iterator[None]:
    """A model whose tensors do not fit is the model's fault, not the checkpoint's (docs/boot.md §4)."""
    try:
        yield
    except TensorMismatchError as exc:
        raise ModelFaultError(
            f"the model's tensors do not fit {opened.slot}/{opened.generation}: {exc.problem}",
            remedy="serve this checkpoint with the model it was made from (node.json 'model'); it is intact",
        ) from exc
