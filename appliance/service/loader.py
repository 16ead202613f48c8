"""Loading a user's model from an entry point, and the optional hooks a model may implement.

Owns: ``build_model`` (``package.module:factory`` -> ``nn.Module``) and the hook accessors.
Does not own restoring or serving. The hooks, all optional:

* ``adapt(inputs: Tensor, targets: Tensor) -> Mapping[str, float]`` — online adaptation; it
  must keep every piece of adaptation state in parameters or buffers (``state_dict()`` is
  what is persisted and restored).
* ``canary_input() -> Tensor`` — a golden input; exports record the model's answer to it and
  boot checks the restored service reproduces it.
* ``adaptation_step() -> int`` — a monotonically growing step count for exports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from appliance.errors import ConfigError, ServiceError
from appliance.node.entrypoint import load_entry_point


def build_model(entry: str) -> nn.Module:
    factory = load_entry_point(entry, "model entry point")
    try:
        model = factory()
    except Exception as exc:
        raise ServiceError(f"model factory {entry} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {entry} returned a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    return model


def canary_input(model: nn.Module) -> torch.Tensor | None:
    hook = getattr(model, "canary_input", None)
    return hook() if callable(hook) else None


def adaptation_step(model: nn.Module) -> int:
    hook = getattr(model, "adaptation_step", None)
    return int(hook()) if callable(hook) else 0


def adapt(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any] | None:
    hook = getattr(model, "adapt", None)
    return dict(hook(inputs, targets)) if callable(hook) else None
