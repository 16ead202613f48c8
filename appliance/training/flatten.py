"""Nested training state <-> named tensors + a JSON skeleton, and back, losslessly.

Owns: ``flatten`` and ``unflatten`` and the skeleton's encoding (docs/design.md, "Training
state"). Does not own what goes into the state (``appliance.training.state``) or storing it.

A state is any nesting of dicts, lists and tuples whose leaves are tensors, numpy arrays,
``torch.dtype`` values or JSON scalars (``None``, ``bool``, ``int``, ``float``, ``str``).
``flatten`` returns every tensor under a unique, valid checkpoint name (its path in the state,
components joined by ``/``) and a JSON skeleton of everything else, in which:

* a tensor is ``{"$tensor": NAME}``; a numpy array ``{"$ndarray": NAME}``;
* a tuple is ``{"$tuple": [...]}`` (so tuples come back as tuples, not lists);
* a float that JSON cannot hold is ``{"$float": "nan" | "inf" | "-inf"}``;
* a ``torch.dtype`` is ``{"$dtype": "float32"}``;
* a dict whose keys are not all strings, or has a key starting with ``$``, is
  ``{"$dict": [[KEY, VALUE], ...]}`` (e.g. an optimizer's integer-keyed ``state``).

Law (tested): ``unflatten(*flatten(s))`` equals ``s`` with the same types, tensors bit-equal.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from appliance.errors import UsageError
from appliance.format.shown import a_or_an
from appliance.limits import DEFAULT_LIMITS

TENSOR, NDARRAY, TUPLE, FLOAT, DTYPE, DICT = "$tensor", "$ndarray", "$tuple", "$float", "$dtype", "$dict"
_MARKERS = frozenset({TENSOR, NDARRAY, TUPLE, FLOAT, DTYPE, DICT})
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_REMEDY = (
    "pass state made of dicts, lists, tuples, tensors, numpy arrays and JSON scalars "
    "(convert other objects with their own state_dict() first)"
)


def flatten(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors by name, skeleton)`` for a nested ``state`` (see the module docstring)."""
    if not isinstance(state, Mapping):
        raise UsageError(f"training state must be a mapping, got {type(state).__name__}", remedy=_REMEDY)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, (), tensors)
    assert isinstance(skeleton, dict)
    return tensors, skeleton


def model_skeleton(names: Iterable[str]) -> dict[str, Any]:
    """The skeleton of ``{"model": state_dict}`` whose tensors keep their ``state_dict()`` names.

    ``unflatten(state_dict, model_skeleton(state_dict))`` is ``{"model": state_dict}``; a
    checkpoint named so is at once a plain model checkpoint and a training one.
    """
    names = list(names)
    if all(not n.startswith("$") for n in names):
        return {"model": {n: {TENSOR: n} for n in names}}
    return {"model": {DICT: [[n, {TENSOR: n}] for n in names]}}


def unflatten(tensors: Mapping[str, torch.Tensor], skeleton: Mapping[str, Any]) -> dict[str, Any]:
    """The nested state ``flatten`` was given, rebuilt from its tensors and skeleton."""
    used: set[str] = set()
    state = _decode(skeleton, tensors, used)
    if not isinstance(state, dict):
        raise UsageError("training skeleton does not describe a mapping")
    unused = sorted(set(tensors) - used)
    if unused:
        raise UsageError(f"tensors not named by the training skeleton: {unused[:5]}")
    return state


def _encode(value: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return {TENSOR: _add(tensors, path, _plain(value, path))}
    if isinstance(value, np.ndarray):
        return {NDARRAY: _add(tensors, path, torch.from_numpy(np.ascontiguousarray(value)))}
    if value is None or isinstance(value, (bool, int, float, str, np.generic, torch.dtype)):
        return _encode_scalar(value)
    if isinstance(value, tuple):
        return {TUPLE: [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return _encode_mapping(value, path, tensors)
    where = "/".join(path) or "the state"
    raise UsageError(
        f"training state at {where!r} holds {a_or_an(type(value).__name__)}, which cannot be stored", remedy=_REMEDY
    )


def _encode_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {FLOAT: repr(value)}
    if isinstance(value, torch.dtype):
        return {DTYPE: str(value).removeprefix("torch.")}
    return value


def _encode_mapping(value: Mapping[Any, Any], path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    plain = all(isinstance(k, str) and not k.startswith("$") for k in value)
    if plain:
        return {k: _encode(v, (*path, _component(k)), tensors) for k, v in value.items()}
    pairs = []
    for k, v in value.items():
        if not (k is None or isinstance(k, (bool, int, float, str))):
            raise UsageError(
                f"training state at {'/'.join(path)!r} has {a_or_an(type(k).__name__)} key", remedy=_REMEDY
            )
        pairs.append([_encode(k, path, {}), _encode(v, (*path, _component(k)), tensors)])
    return {DICT: pairs}


def _component(key: object) -> str:
    """A path component for ``key``: string keys percent-quoted, others ``#`` + their JSON."""
    if isinstance(key, str):
        text = quote(key, safe="")
        return text if text not in ("", ".", "..") else "%" + text.replace(".", "%2E")
    return "#" + quote(json.dumps(key), safe="")


def _add(tensors: dict[str, torch.Tensor], path: tuple[str, ...], tensor: torch.Tensor) -> str:
    name = "/".join(path) or "%"
    if len(name.encode()) > DEFAULT_LIMITS.max_name_bytes:
        name = "long/" + hashlib.sha256(name.encode()).hexdigest()
    if name in tensors:  # cannot happen for distinct paths; kept as an invariant check
        raise UsageError(f"two tensors of the training state map to the checkpoint name {name!r}")
    tensors[name] = tensor
    return name


def _plain(t: torch.Tensor, path: tuple[str, ...]) -> torch.Tensor:
    if t.layout != torch.strided or t.is_quantized:
        raise UsageError(f"training state at {'/'.join(path)!r} is a {t.layout} tensor", remedy=_REMEDY)
    return t.detach()


def _decode(value: Any, tensors: Mapping[str, torch.Tensor], used: set[str]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, used) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _MARKERS:
        ((marker, body),) = value.items()
        return _decode_marker(marker, body, tensors, used)
    return {k: _decode(v, tensors, used) for k, v in value.items()}


def _decode_marker(marker: str, body: Any, tensors: Mapping[str, torch.Tensor], used: set[str]) -> Any:
    if marker in (TENSOR, NDARRAY):
        if body not in tensors:
            raise UsageError(f"the training skeleton names tensor {body!r:.80}, which the checkpoint lacks")
        used.add(body)
        return tensors[body] if marker == TENSOR else tensors[body].numpy()
    if marker == TUPLE:
        return tuple(_decode(v, tensors, used) for v in body)
    if marker == FLOAT:
        return _NONFINITE[body]
    if marker == DTYPE:
        dtype = getattr(torch, body, None)
        if not isinstance(dtype, torch.dtype):
            raise UsageError(f"the training skeleton names dtype {body!r:.40}, unknown to this torch")
        return dtype
    return {_decode(k, tensors, used): _decode(v, tensors, used) for k, v in body}
