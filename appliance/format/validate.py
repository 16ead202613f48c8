"""The structural validator shared by the writer (commit) and every reader of a manifest.

Owns: the rules on depths, sizes, names and counts (docs/design.md §4.3 "One validator"):
``check_metadata`` (JSON types, nesting depth, canonical size), ``validate_tensor_name``,
``check_shape`` (rank and dimensions) and ``check_tensor_count``. Each takes the error class
to raise: readers pass ``ManifestError`` (the stored checkpoint is malformed: exit 34) and the
commit path passes ``UsageError`` (the caller's input is refused before anything is written:
exit 10), so one rule never has two versions and a writer can never accept what a reader
refuses. Does not own the manifest schema (``manifest``) or JSON parsing (``canonical``).

No check recurses: nesting is walked with an explicit stack that stops at the depth cap, so
20,000 levels (or a dict that contains itself) fail fast with the typed error, never with
``RecursionError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.errors import ApplianceError, ManifestError
from appliance.format.canonical import canonical_bytes
from appliance.format.directory import check_label
from appliance.format.shown import a_or_an, shown
from appliance.limits import DEFAULT_LIMITS, Limits

# A manifest's metadata sits at depth 3 of the signed statement (statement -> predicate ->
# metadata); the reader caps the whole statement at ``json_max_depth``. So metadata may nest
# at most json_max_depth - METADATA_DEPTH_OFFSET levels (counting itself and its scalars).
METADATA_DEPTH_OFFSET = 2
_SCALARS = (str, int, float, bool, type(None))
INT_REMEDY = (
    'store a number that long as a JSON string (quoted: "12345...") or as a tensor; metadata integers have at '
    f"most {DEFAULT_LIMITS.metadata_int_max_digits} decimal digits (appliance/limits.py)"
)


def _too_many_digits(value: int, digits: int) -> bool:
    """``abs(value)`` has more than ``digits`` decimal digits (never converted to text, which Python caps)."""
    if value.bit_length() <= digits * 3:  # 2**(3d) < 10**d: surely within
        return False
    return bool(abs(value) >= 10**digits)


def _check_scalar(item: object, where: str, error: type[ApplianceError], limits: Limits) -> None:
    if isinstance(item, int) and _too_many_digits(item, limits.metadata_int_max_digits):
        raise error(
            f"{where} is an integer of more than {limits.metadata_int_max_digits} decimal digits, the cap for "
            "an integer in metadata (every reader must be able to parse it back)",
            remedy=INT_REMEDY,
        )
    if isinstance(item, float) and not math.isfinite(item):
        raise error(f"{where} is {item}, which JSON cannot carry")
    if not isinstance(item, _SCALARS):
        raise error(f"{where} is {a_or_an(type(item).__name__)}, not a JSON value")


def metadata_max_depth(limits: Limits = DEFAULT_LIMITS) -> int:
    return limits.json_max_depth - METADATA_DEPTH_OFFSET


def check_metadata(
    metadata: object, error: type[ApplianceError], limits: Limits = DEFAULT_LIMITS, *, what: str = "metadata"
) -> bytes:
    """The canonical bytes of ``metadata`` after checking types, depth and size (no recursion)."""
    if not isinstance(metadata, Mapping):
        raise error(f"{what} must be a JSON object (a mapping), got {type(metadata).__name__}")
    cap = metadata_max_depth(limits)
    budget = limits.metadata_max_bytes  # every JSON value takes at least one byte
    stack: list[tuple[Any, int, str]] = [(metadata, 1, what)]
    while stack:
        item, depth, where = stack.pop()
        budget -= 1
        if depth > cap:
            raise error(
                f"{where} is nested deeper than {cap} levels, the reader's cap for metadata (the outermost object"
                f" is level 1 and a value counts as a level of its own: at most {cap - 1} nested objects or lists)"
            )
        if budget < 0:
            raise error(f"{what} holds more values than fit in {limits.metadata_max_bytes} bytes")
        if isinstance(item, Mapping):
            for key, value in item.items():
                if not isinstance(key, str):
                    raise error(f"{where} has a non-string key {key!r:.40}")
                stack.append((value, depth + 1, f"{where}.{key[:40]}"))
        elif isinstance(item, list | tuple):
            stack.extend((value, depth + 1, f"{where}[{i}]") for i, value in enumerate(item))
        else:
            _check_scalar(item, where, error, limits)
    try:
        data = canonical_bytes(dict(metadata))
    except ApplianceError as exc:
        raise error(f"{what} is not canonical JSON: {exc.problem}") from exc
    if len(data) > limits.metadata_max_bytes:
        raise error(f"{what} is {len(data)} bytes; the cap is {limits.metadata_max_bytes}")
    return data


def validate_tensor_name(
    value: object, limits: Limits = DEFAULT_LIMITS, error: type[ApplianceError] = ManifestError
) -> str:
    """Tensor names: the label rules of docs/design.md §4.3 rule 1 (``directory.check_label``), as ``error``."""
    try:
        return check_label(value, "tensor name", limits)
    except ManifestError as exc:
        if error is ManifestError:
            raise
        raise error(exc.problem) from exc


def check_shape(name: str, shape: object, error: type[ApplianceError], limits: Limits = DEFAULT_LIMITS) -> None:
    """A shape is a list of at most ``max_tensor_dims`` integers in 0..tensor_max_bytes."""
    if not isinstance(shape, list | tuple) or len(shape) > limits.max_tensor_dims:
        raise error(f"tensor {shown(name)}: shape must be a list of at most {limits.max_tensor_dims} dims")
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= limits.tensor_max_bytes:
            raise error(f"tensor {shown(name)}: shape has an invalid dimension {dim!r:.40}")


def check_tensor_bytes(name: str, nbytes: int, error: type[ApplianceError], limits: Limits = DEFAULT_LIMITS) -> None:
    if not 0 <= nbytes <= limits.tensor_max_bytes:
        raise error(f"tensor {shown(name)} is {nbytes} bytes, outside the allowed range 0..{limits.tensor_max_bytes}")


def check_tensor_count(count: int, error: type[ApplianceError], limits: Limits = DEFAULT_LIMITS) -> None:
    if count > limits.max_tensors:
        raise error(f"{count} tensors; a checkpoint holds at most {limits.max_tensors}")


def check_unique(names: Sequence[str], error: type[ApplianceError]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise error(f"tensor name {shown(name)} appears twice")
        seen.add(name)
