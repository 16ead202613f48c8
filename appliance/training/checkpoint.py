"""Training state in the store: one signed checkpoint holds model, optimizers, schedulers, RNG, position.

Owns: ``save`` / ``load`` / ``TrainingCheckpoint`` and the manifest metadata key
``appliance.training``. Does not own gathering the state (``state``) or its encoding
(``flatten``); storing goes through ``appliance.api``, so a training checkpoint is an
ordinary checkpoint (verified, delta-compressed, restorable by ``appliance restore``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from appliance import api
from appliance.errors import ManifestError, UsageError
from appliance.format.export import TRAINING_KEY
from appliance.format.validate import metadata_max_depth
from appliance.signing import SigningKey
from appliance.store.commit import CommitResult
from appliance.store.store import Store
from appliance.training.flatten import flatten, model_skeleton, unflatten
from appliance.training.state import Optimizers, Stateful, get_state_dict, set_state_dict

METADATA_KEY = TRAINING_KEY  # "appliance.training"
SKELETON_VERSION = 1


def served_record(names: Iterable[str]) -> dict[str, Any]:
    """The training record of a served model's state, ``get_state_dict(model, rng=False)``.

    The serving process (``appliance.service``) exports ``model.state_dict()`` under its own
    names; this record in the checkpoint's metadata (``METADATA_KEY``) makes the persisted
    checkpoint a training checkpoint that ``load`` resumes, while boot still restores it into
    ``model.state_dict()`` by name. A model keeps its adaptation state (optimizer moments,
    step) in parameters and buffers (``appliance.service.loader``), so this is all of it.
    """
    return {"version": SKELETON_VERSION, "state": model_skeleton(names)}


@dataclass(frozen=True)
class TrainingCheckpoint:
    """What ``load`` put back, and the JSON it returns to the caller."""

    position: Any
    extra: Any
    generation: int
    slot: str
    manifest_digest: str
    metadata: dict[str, Any]


def save(
    store: Store,
    key: SigningKey | Sequence[SigningKey],
    model: nn.Module,
    optimizers: Optimizers = (),
    *,
    stateful: Mapping[str, Stateful] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    rng: bool = True,
    position: Any = None,
    extra: Any = None,
    metadata: Mapping[str, Any] | None = None,
    policy: str | None = None,
    full: bool = False,
) -> CommitResult:
    """Commit the training state (see ``get_state_dict`` for the arguments) as one checkpoint.

    ``metadata`` is the caller's own JSON, stored beside the training skeleton; the key
    ``appliance.training`` is reserved. Raises ``UsageError`` naming the argument at fault.
    """
    user = dict(metadata or {})
    if METADATA_KEY in user:
        raise UsageError(f"metadata key {METADATA_KEY!r} is reserved for the training skeleton")
    state = get_state_dict(
        model, optimizers, stateful=stateful, generators=generators, rng=rng, position=position, extra=extra
    )
    tensors, skeleton = flatten(state)
    user[METADATA_KEY] = {"version": SKELETON_VERSION, "state": skeleton}
    # A training state is explicit even without tensors (its skeleton lives in the metadata);
    # retention still never drops the newest checkpoint with tensors (rule G3).
    try:
        return api.save(store, tensors, key, user, policy=policy, full=full, allow_empty=True)
    except UsageError as exc:
        raise _as_argument_error(exc) from exc


def _as_argument_error(exc: UsageError) -> UsageError:
    """A metadata rule broken inside ``position`` or ``extra``, said of that API argument (never of
    ``metadata``, which the caller may not have passed). They are stored as metadata
    ``appliance.training.state.<argument>``: three levels down, so three fewer levels of nesting."""
    for argument in ("position", "extra"):
        stored = f"metadata.{METADATA_KEY}.state.{argument}"
        if exc.problem.startswith(stored):
            levels = metadata_max_depth() - 3
            return UsageError(
                f"argument `{argument}`{exc.problem[len(stored) :]}",
                remedy=f"pass `{argument}` as JSON-like values (dicts with string keys, lists, tuples, finite numbers, "
                f"strings) within the metadata caps of appliance/limits.py: it is stored inside the checkpoint's "
                f"metadata, so at most {levels} levels deep ({argument} itself is level 1; a tuple or a dict with "
                "non-string keys takes one level more); keep large or deep state "
                "in tensors (a `stateful` object's state_dict)"
                + (f"; {exc.remedy}" if "integer" in exc.problem else ""),
            )
    return exc


def load(
    store: Store,
    model: nn.Module,
    optimizers: Optimizers = (),
    *,
    stateful: Mapping[str, Stateful] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    rng: bool = True,
    generation: int | None = None,
    floor: int = 0,
) -> TrainingCheckpoint:
    """Restore the newest valid training checkpoint (or ``generation``) into the objects given.

    Every frame is verified before any object is touched; then the model, optimizers,
    ``stateful`` objects and (``rng=True``) the global RNGs and ``generators`` are set.
    """
    loaded = api.load(store, generation=generation, floor=floor)
    metadata = dict(loaded.metadata)
    record = metadata.pop(METADATA_KEY, None)
    if not isinstance(record, dict) or record.get("version") != SKELETON_VERSION:
        raise ManifestError(
            f"generation {loaded.generation} is not a training checkpoint (no {METADATA_KEY!r} v1 metadata)",
            remedy="load it with appliance.api.load, or save training state with appliance.training.save",
        )
    state = unflatten(loaded.tensors, record["state"])
    resumed = set_state_dict(model, optimizers, state=state, stateful=stateful, generators=generators, rng=rng)
    return TrainingCheckpoint(
        position=resumed["position"],
        extra=resumed["extra"],
        generation=loaded.generation,
        slot=loaded.slot,
        manifest_digest=loaded.manifest_digest,
        metadata=metadata,
    )
