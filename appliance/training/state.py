"""The state that makes a resumed training run not diverge, gathered and put back.

Owns: ``get_state_dict`` / ``set_state_dict`` (named after ``torch.distributed.checkpoint``'s
pair), optimizer state keyed by parameter names instead of positions, and the RNG states.
Does not own flattening (``flatten``) or the store (``appliance.training.checkpoint``).

The nested state has these sections (absent ones are omitted)::

    {"model": model.state_dict(),
     "optim": [per optimizer: {"state": {PARAM_FQN: {...}}, "param_groups": [{"params": [FQN...], ...}]}],
     "stateful": {NAME: obj.state_dict()}   # LR schedulers, grad scaler, anything with state_dict()
     "rng": {"torch": ..., "cuda": [...], "python": ..., "numpy": ..., "generators": {NAME: ...}},
     "position": JSON,                      # where the data loader is (epoch, batch, ...)
     "extra": JSON}

Optimizer state is keyed by fully-qualified parameter names (``model.named_parameters()``),
as ``torch.distributed.checkpoint.state_dict.get_state_dict`` does, so a checkpoint survives
the optimizer being rebuilt with its parameters in another order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from appliance.errors import TensorMismatchError, UsageError
from appliance.format.shown import a_or_an

log = logging.getLogger(__name__)


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()``: LR schedulers, ``GradScaler``, ..."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]


def get_state_dict(
    model: nn.Module,
    optimizers: Optimizers = (),
    *,
    stateful: Mapping[str, Stateful] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    rng: bool = True,
    position: Any = None,
    extra: Any = None,
) -> dict[str, Any]:
    """The nested training state of ``model``, ``optimizers`` and ``stateful`` objects.

    ``rng`` adds the global torch CPU, CUDA (every device, if CUDA is initialised), Python
    ``random`` and numpy RNG states; ``generators`` adds named ``torch.Generator`` states (e.g.
    a sampler's). ``position`` and ``extra`` are JSON-like values stored as given.
    """
    _check_model(model)
    state: dict[str, Any] = {"model": model.state_dict()}
    opts = _optimizer_list(optimizers)
    if opts:
        state["optim"] = [optimizer_state_dict(model, opt) for opt in opts]
    if stateful:
        state["stateful"] = {name: _stateful(name, obj).state_dict() for name, obj in stateful.items()}
    if position is not None:
        state["position"] = position
    if extra is not None:
        state["extra"] = extra
    if rng or generators:
        state["rng"] = rng_state(generators or {}, include_global=rng)  # last: nothing above draws numbers
    return state


def set_state_dict(
    model: nn.Module,
    optimizers: Optimizers = (),
    *,
    state: Mapping[str, Any],
    stateful: Mapping[str, Stateful] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    rng: bool = True,
) -> dict[str, Any]:
    """Put ``state`` (from ``get_state_dict``) back; returns ``{"position": ..., "extra": ...}``.

    Raises ``TensorMismatchError`` when the objects given do not match the saved ones (other
    parameters, another number of optimizers, a stateful object saved but not given).
    """
    _check_model(model)
    opts = _optimizer_list(optimizers)
    saved_opts = state.get("optim", [])
    if len(saved_opts) != len(opts):
        raise TensorMismatchError(
            f"the checkpoint holds state for {len(saved_opts)} optimizer(s), {len(opts)} given",
            remedy="pass the same optimizers (argument `optimizers`) that were saved",
        )
    # Every argument is checked against the saved state before any object is touched: a refusal
    # never leaves a half-resumed model or optimizer behind (new-user trial, 2026-12-05).
    _check_model_state(model, state["model"])
    plans = [_optimizer_plan(model, opt, saved) for opt, saved in zip(opts, saved_opts, strict=True)]
    objects = _check_stateful(state.get("stateful", {}), stateful or {})
    _check_generators(state.get("rng", {}), generators or {})
    model.load_state_dict(state["model"], strict=True)
    for opt, plan in zip(opts, plans, strict=True):
        opt.load_state_dict(plan)
    for name, obj in objects.items():
        obj.load_state_dict(dict(state["stateful"][name]))
    if "rng" in state and (rng or generators):
        set_rng_state(state["rng"], generators or {}, include_global=rng)
    return {"position": state.get("position"), "extra": state.get("extra")}


def _check_model_state(model: nn.Module, saved: Mapping[str, Any]) -> None:
    """Refuse, naming the tensors, a model whose names, shapes or dtypes differ from the saved ones.

    ``load_state_dict`` copies every matching tensor before it reports a size mismatch, which
    would leave the model half-loaded; this check runs first, so a refusal touches nothing.
    """
    current = model.state_dict()
    missing, extra = sorted(set(saved) - set(current)), sorted(set(current) - set(saved))
    differ = [
        f"{name}: saved {tuple(saved[name].shape)} {saved[name].dtype}, model {tuple(t.shape)} {t.dtype}"
        for name, t in current.items()
        if name in saved
        and isinstance(saved[name], torch.Tensor)
        and (tuple(saved[name].shape) != tuple(t.shape) or saved[name].dtype != t.dtype)
    ]
    if missing or extra or differ:
        raise TensorMismatchError(
            f"the model does not match the checkpoint (nothing was loaded): missing {missing[:5]}, "
            f"extra {extra[:5]}, different {differ[:5]}",
            remedy="build the model with the same architecture and dtypes as the one saved (argument `model`)",
        )


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter positions replaced by the model's parameter names."""
    names = _param_names(model, optimizer)
    sd = optimizer.state_dict()
    return {
        "state": {names[i]: dict(v) for i, v in sd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]],
    }


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> None:
    """Load ``saved`` (from ``optimizer_state_dict``) by parameter name, whatever the order within groups."""
    optimizer.load_state_dict(_optimizer_plan(model, optimizer, saved))


def _optimizer_plan(model: nn.Module, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> dict[str, Any]:
    """What ``optimizer.load_state_dict`` gets for ``saved``; ``TensorMismatchError`` if it does not fit."""
    names = _param_names(model, optimizer)
    index = {name: i for i, name in enumerate(names)}
    current = [[index[n] for n in names_of_group] for names_of_group in _group_names(optimizer, names)]
    saved_groups = saved["param_groups"]
    same = len(saved_groups) == len(current) and all(
        sorted(g["params"]) == sorted(names[i] for i in ids) for g, ids in zip(saved_groups, current, strict=False)
    )
    if not same:
        saved_names = {n for g in saved_groups for n in g["params"]}
        missing, extra = sorted(saved_names - set(names)), sorted(set(names) - saved_names)
        raise TensorMismatchError(
            f"optimizer parameters differ from the checkpoint: saved only {missing[:5]}, given only {extra[:5]} "
            f"({len(saved_groups)} parameter group(s) saved, {len(current)} given)",
            remedy="build the optimizer over the same parameters and groups (argument `optimizers`) as when saved",
        )
    _check_optimizer_kind(optimizer, saved_groups)
    # Optimizer.load_state_dict pairs saved and current parameters by position within each group.
    groups = [{**g, "params": ids} for g, ids in zip(saved_groups, current, strict=True)]
    return {"state": {index[n]: v for n, v in saved["state"].items()}, "param_groups": groups}


def _check_optimizer_kind(optimizer: torch.optim.Optimizer, saved_groups: Sequence[Mapping[str, Any]]) -> None:
    """``TensorMismatchError`` when the saved groups' hyperparameters belong to another kind of optimizer.

    torch's own ``load_state_dict`` takes AdamW state into SGD without a word and fails at the next
    ``step()`` (or silently trains with the wrong state). One side having keys the other lacks is
    a torch version that added a hyperparameter; both sides having their own is another optimizer.
    """
    for number, (saved, now) in enumerate(zip(saved_groups, optimizer.param_groups, strict=False)):
        only_saved, only_now = set(saved) - set(now) - {"params"}, set(now) - set(saved) - {"params"}
        if only_saved and only_now:
            raise TensorMismatchError(
                f"optimizer state is of another kind of optimizer than {type(optimizer).__name__}: parameter group "
                f"{number} was saved with {sorted(only_saved)[:5]} and the given optimizer has {sorted(only_now)[:5]}",
                remedy="build the same optimizer class as when saved (argument `optimizers`)",
            )


def rng_state(generators: Mapping[str, torch.Generator], *, include_global: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if include_global:
        out["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            out["cuda"] = torch.cuda.get_rng_state_all()
        version, internal, gauss = random.getstate()
        out["python"] = {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}
        out["numpy"] = np.random.get_state(legacy=True)
    if generators:
        out["generators"] = {name: g.get_state() for name, g in generators.items()}
    return out


def set_rng_state(
    saved: Mapping[str, Any], generators: Mapping[str, torch.Generator], *, include_global: bool = True
) -> None:
    if include_global and "torch" in saved:
        torch.set_rng_state(saved["torch"])
        _set_cuda_rng(saved.get("cuda"))
        py = saved["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
        np.random.set_state(saved["numpy"])
    saved_gens = saved.get("generators", {})
    for name, gen in generators.items():
        if name not in saved_gens:
            raise TensorMismatchError(
                f"the checkpoint holds no state for generator {name!r} (it has {sorted(saved_gens)[:5]})",
                remedy="pass the generators (argument `generators`) under the names they were saved with",
            )
        gen.set_state(saved_gens[name])


def _set_cuda_rng(states: Sequence[torch.Tensor] | None) -> None:
    if states is None:
        return
    if not torch.cuda.is_available():
        log.warning("checkpoint holds CUDA RNG states but CUDA is not available: not restored")
        return
    if len(states) != torch.cuda.device_count():
        log.warning(
            "checkpoint holds %d CUDA RNG states, %d devices here: not restored", len(states), torch.cuda.device_count()
        )
        return
    torch.cuda.set_rng_state_all(list(states))


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The model's name for each optimizer parameter, in the optimizer's state_dict order."""
    by_id: dict[int, str] = {}
    for name, p in model.named_parameters():
        by_id.setdefault(id(p), name)
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise UsageError(
                    f"optimizer parameter of shape {list(p.shape)} is not a parameter of the model",
                    remedy="pass the model (argument `model`) whose parameters the optimizer updates",
                )
            names.append(by_id[id(p)])
    if len(set(names)) != len(names):
        raise UsageError("an optimizer holds one parameter twice")
    return names


def _group_names(optimizer: torch.optim.Optimizer, names: list[str]) -> list[list[str]]:
    out, start = [], 0
    for group in optimizer.param_groups:
        out.append(names[start : start + len(group["params"])])
        start += len(group["params"])
    return out


def _optimizer_list(optimizers: Optimizers) -> list[torch.optim.Optimizer]:
    opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    for opt in opts:
        if not isinstance(opt, torch.optim.Optimizer):
            raise UsageError(
                f"argument `optimizers` holds {a_or_an(type(opt).__name__)}, not a torch.optim.Optimizer",
                remedy="pass LR schedulers, grad scalers and other objects in `stateful={name: obj}`",
            )
    return opts


def _stateful(name: str, obj: Any) -> Stateful:
    if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
        raise UsageError(
            f"stateful[{name!r}] is {a_or_an(type(obj).__name__)} without state_dict()/load_state_dict()",
            remedy="pass objects such as LR schedulers and torch.amp.GradScaler in argument `stateful`",
        )
    return obj  # type: ignore[no-any-return]


def _check_stateful(saved: Mapping[str, Any], given: Mapping[str, Stateful]) -> dict[str, Stateful]:
    if set(saved) != set(given):
        raise TensorMismatchError(
            f"stateful objects differ: saved {sorted(saved)}, given {sorted(given)}",
            remedy="pass the same `stateful={name: obj}` objects that were saved",
        )
    objects = {name: _stateful(name, obj) for name, obj in given.items()}
    for name, obj in objects.items():  # another kind of object (StepLR state into a LambdaLR) would half-load
        mine, theirs = set(obj.state_dict()), set(saved[name]) if isinstance(saved[name], Mapping) else set()
        if mine != theirs:
            raise TensorMismatchError(
                f"stateful[{name!r}] is {a_or_an(type(obj).__name__)} whose state has other fields than the saved one "
                f"(saved only {sorted(map(str, theirs - mine))[:5]}, given only {sorted(map(str, mine - theirs))[:5]})",
                remedy=f"pass the same kind of object as stateful[{name!r}] as when it was saved",
            )
    return objects


def _check_generators(saved_rng: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    saved_gens = saved_rng.get("generators", {})
    wrong = sorted(name for name, g in generators.items() if not isinstance(g, torch.Generator))
    if wrong:
        raise UsageError(
            f"generators {wrong[:5]} are not torch.Generator objects",
            remedy="pass torch.Generator objects in argument `generators` (numpy generators are not saved)",
        )
    missing = sorted(set(generators) - set(saved_gens))
    if missing:
        raise TensorMismatchError(
            f"the checkpoint holds no state for generator(s) {missing[:5]} (it has {sorted(saved_gens)[:5]})",
            remedy="pass the generators (argument `generators`) under the names they were saved with",
        )


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"argument `model` is {a_or_an(type(model).__name__)}, not a torch.nn.Module",
            remedy="pass the model itself (not its state_dict()); appliance.api.save stores a flat tensor mapping",
        )
