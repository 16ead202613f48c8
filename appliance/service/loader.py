"""Loading a user's model from an entry point, and the optional hooks a model may implement.

Owns: ``build`` (``package.module:factory`` -> ``nn.Module``), including the opt-in
``meta`` build that skips the factory's weight initialisation, and the hook accessors. Does not
own restoring or serving.

``model_init`` (node.json): ``factory`` runs the factory as is. ``meta`` runs it on PyTorch's
meta device (shapes only, no memory, no random initialisation) and then gives every tensor
uninitialised CPU memory (``Module.to_empty``): the verified restore overwrites every tensor of
``state_dict()`` anyway, so initialising them first only costs boot time (1.5 s for the 1 GB
demo model here; far more for a 7B model on a Jetson's CPU). It is refused, with the reason
logged and the factory run as is, when the restore would not cover the whole module: a
non-persistent buffer, parameters or buffers shared under two names (``to_empty`` would untie
them), or a factory that cannot run on the meta device. What it cannot see: plain Python
attributes a factory computes from initial weights; the canary catches a model that needs them.

The hooks, all optional:

* ``adapt(inputs: Tensor, targets: Tensor) -> Mapping[str, float]`` — online adaptation; it
  must keep every piece of adaptation state in parameters or buffers (``state_dict()`` is
  what is persisted and restored).
* ``canary_input() -> Tensor`` — a golden input; exports record the model's answer to it and
  boot checks the restored service reproduces it.
* ``adaptation_step() -> int`` — a monotonically growing step count for exports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from appliance.errors import ConfigError, ServiceError
from appliance.format.shown import a_or_an
from appliance.node.config import MODEL_INIT
from appliance.node.entrypoint import load_entry_point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltModel:
    """A model ready for the restore, and how it was built (``meta`` or why it was not)."""

    model: nn.Module
    init: str  # "factory", "meta", or "factory (meta refused: <reason>)"


def build(entry: str, init: str = "factory") -> BuiltModel:
    if init not in MODEL_INIT:
        raise ConfigError(f"model_init must be one of {', '.join(MODEL_INIT)}, got {init!r:.40}")
    factory = load_entry_point(entry, "model entry point")
    if init == "meta":
        model, refused = _build_uninitialised(factory)
        if model is not None:
            return BuiltModel(model, "meta")
        log.warning("model_init 'meta' refused for %s: %s; running the factory as is", entry, refused)
        return BuiltModel(_build_initialised(factory, entry), f"factory (meta refused: {refused})")
    return BuiltModel(_build_initialised(factory, entry), "factory")


def _build_initialised(factory: Callable[[], Any], entry: str) -> nn.Module:
    try:
        model = factory()
    except Exception as exc:
        raise ServiceError(f"model factory {entry} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {entry} returned {a_or_an(type(model).__name__)}, not a torch.nn.Module")
    model.eval()
    return model


def _build_uninitialised(factory: Callable[[], Any]) -> tuple[nn.Module | None, str]:
    """The factory's module with uninitialised CPU tensors, or ``None`` and why it may not be used."""
    try:
        with torch.device("meta"):
            model = factory()
    except Exception as exc:  # any failure here only means "initialise as usual"
        return None, f"the factory cannot run on the meta device ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(model, nn.Module):
        return None, f"the factory returned {a_or_an(type(model).__name__)}"
    uncovered = restore_does_not_cover(model)
    if uncovered:
        return None, uncovered
    model.to_empty(device="cpu")
    model.eval()
    return model, ""


def restore_does_not_cover(model: nn.Module) -> str:
    """Why a restore of ``state_dict()`` would leave part of ``model`` uninitialised ("" if it would not)."""
    persistent = set(model.state_dict(keep_vars=True))
    transient = [name for name, _ in model.named_buffers() if name not in persistent]
    if transient:
        return f"non-persistent buffers ({', '.join(transient[:3])}) are not in the checkpoint"
    first_name: dict[int, str] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        other = first_name.setdefault(id(tensor), name)
        if other != name:
            return f"{other} and {name} share one tensor (to_empty would untie them)"
    return ""


def canary_input(model: nn.Module) -> torch.Tensor | None:
    hook = getattr(model, "canary_input", None)
    return hook() if callable(hook) else None


def adaptation_step(model: nn.Module) -> int:
    hook = getattr(model, "adaptation_step", None)
    return int(hook()) if callable(hook) else 0


def adapts(model: nn.Module) -> bool:
    """Whether the model adapts online (has an ``adapt(inputs, targets)`` method)."""
    return callable(getattr(model, "adapt", None))


def adapt(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any] | None:
    hook = getattr(model, "adapt", None)
    return dict(hook(inputs, targets)) if callable(hook) else None
