"""The health-gate canary a checkpoint carries: a golden input and the output it must produce.

Owns: ``Canary`` (stored under the ``canary`` key of a checkpoint's signed metadata), its JSON
form, and ``check`` — comparing a service's answer with the expectation, either within a
tolerance (``expected`` + ``atol``/``rtol``) or exactly (``output_sha256`` over the canonical
JSON of the output). Does not own running the model (the service) or deciding what a failed
canary means (``appliance.boot``). Pure: no torch, plain nested lists of numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from appliance.errors import CanaryNotRecordableError, ManifestError
from appliance.format.canonical import canonical_bytes, require_keys
from appliance.format.digest import Digest
from appliance.format.shown import a_or_an

METADATA_KEY = "canary"
MAX_VALUES = 65536

Nested = list[Any]


@dataclass(frozen=True)
class CanaryResult:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Canary:
    input: Nested
    expected: Nested | None = None
    atol: float = 1e-5
    rtol: float = 1e-4
    output_sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.expected is None) == (self.output_sha256 is None):
            raise ManifestError("a canary needs exactly one of expected (with tolerances) or output_sha256")
        _check_numbers(self.input, "canary input")
        if self.expected is not None:
            _check_numbers(self.expected, "canary expected output")
        if not (self.atol >= 0 and self.rtol >= 0 and math.isfinite(self.atol) and math.isfinite(self.rtol)):
            raise ManifestError("canary tolerances must be finite and non-negative")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input": self.input}
        if self.expected is not None:
            out.update(expected=self.expected, atol=self.atol, rtol=self.rtol)
        else:
            out["output_sha256"] = self.output_sha256
        return out

    @classmethod
    def from_dict(cls, obj: object) -> Canary:
        d = require_keys(obj, "canary", {"input"}, frozenset({"expected", "atol", "rtol", "output_sha256"}))
        digest = d.get("output_sha256")
        return cls(
            input=_nested(d["input"], "canary input"),
            expected=_nested(d["expected"], "canary expected output") if "expected" in d else None,
            atol=_number(d.get("atol", 1e-5), "canary atol"),
            rtol=_number(d.get("rtol", 1e-4), "canary rtol"),
            output_sha256=None if digest is None else Digest.parse(digest, "canary output_sha256").hex,
        )

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Canary | None:
        """The canary of a checkpoint's metadata, ``None`` if it carries none."""
        if METADATA_KEY not in metadata:
            return None
        return cls.from_dict(metadata[METADATA_KEY])


def output_digest(output: Nested) -> str:
    """SHA-256 of the canonical JSON of an output: what ``output_sha256`` pins exactly."""
    return Digest.of(canonical_bytes(output)).hex


def check(canary: Canary, output: object) -> CanaryResult:
    """Does ``output`` (the service's answer to ``canary.input``) meet the expectation?"""
    if not isinstance(output, list):
        return CanaryResult(False, f"the service answered {a_or_an(type(output).__name__)}, not a list")
    if canary.output_sha256 is not None:
        got = output_digest(output)
        ok = got == canary.output_sha256
        return CanaryResult(ok, "output digest matches" if ok else f"output digest {got[:12]} != expected")
    assert canary.expected is not None
    try:
        want, have = _flatten(canary.expected), _flatten(output)
    except ManifestError as exc:
        return CanaryResult(False, exc.problem)
    if _shape(canary.expected) != _shape(output):
        return CanaryResult(False, f"output shape {_shape(output)} != expected {_shape(canary.expected)}")
    worst, index = 0.0, -1
    for i, (w, h) in enumerate(zip(want, have, strict=True)):
        excess = abs(h - w) - (canary.atol + canary.rtol * abs(w))
        if not math.isfinite(h) or excess > worst:
            worst, index = (math.inf if not math.isfinite(h) else excess), i
    if index >= 0:
        return CanaryResult(False, f"output[{index}] = {have[index]!r} differs from {want[index]!r} beyond tolerance")
    return CanaryResult(True, f"{len(want)} values within atol={canary.atol} rtol={canary.rtol}")


def check_recordable(canary: Canary, max_rank: int) -> None:
    """``CanaryNotRecordableError`` (a ``ManifestError``) unless boot's canary request can carry
    ``canary`` and its answer can be compared.

    Checked when a canary is recorded (seed, every export), not when one is read: the input is a
    (nested) list of rank 1..``max_rank`` (the control channel's request cap), and every input and
    expected number is finite (NaN or Infinity cannot be stored as canonical JSON nor compared).
    """
    for what, value in (("input", canary.input), ("answer", canary.expected)):
        rank = len(_shape(value))
        if value is not None and (not isinstance(value, list) or not 1 <= rank <= max_rank):
            raise CanaryNotRecordableError(
                f"the canary {what} must be a (nested) list of rank 1..{max_rank}, not rank {rank}",
                part=what,
                nonfinite=False,
            )
    for what, value in (("input", canary.input), ("answer", canary.expected)):
        if value is not None and not all(math.isfinite(x) for x in _flatten(value)):
            raise CanaryNotRecordableError(f"the canary {what} holds NaN or Infinity", part=what, nonfinite=True)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestError(f"{what} must be a number")
    return float(value)


def _nested(value: object, what: str) -> Nested:
    if not isinstance(value, list):
        raise ManifestError(f"{what} must be a (nested) list of numbers")
    _check_numbers(value, what)
    return value


def _check_numbers(value: Nested, what: str) -> None:
    flat = _flatten(value)
    if not flat or len(flat) > MAX_VALUES:
        raise ManifestError(f"{what} must hold 1..{MAX_VALUES} numbers")


def _flatten(value: object) -> list[float]:
    out: list[float] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise ManifestError(f"canary values must be numbers, got {type(item).__name__}")
        else:
            out.append(float(item))
        if len(out) > MAX_VALUES:
            raise ManifestError(f"canary holds more than {MAX_VALUES} numbers")
    return out


def _shape(value: object) -> tuple[int, ...]:
    dims: list[int] = []
    while isinstance(value, list):
        dims.append(len(value))
        value = value[0] if value else None
    return tuple(dims)
