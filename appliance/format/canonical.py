"""Canonical JSON: the only byte form that is hashed or signed, and a strict parser.

Owns: ``canonical_bytes`` (sorted keys, no whitespace, UTF-8, no NaN/Infinity) and
``strict_loads`` (size cap, depth cap, duplicate keys refused, NaN refused, UTF-8 only).
Does not own: schemas (see ``manifest``, ``statement``, ``commit``).

Canonical form is Python's ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8. Floats use Python's shortest
round-trip repr. Readers that verify a signature over a payload also check that the payload
*is* canonical, so two byte strings can never carry the same signed meaning.
"""

from __future__ import annotations

import json
import re
from typing import Any

from appliance.errors import IntegrityError, ManifestError


def canonical_bytes(value: Any) -> bytes:
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")  # inside the try: a lone surrogate has no UTF-8 form
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"value cannot be canonical JSON: {exc}") from exc


class DuplicateKeyError(ValueError):
    """A JSON object gives ``key`` twice (a ``ValueError``, as ``json.loads`` callers expect)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r:.60}")
        self.key = key


def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook: a key given twice is a ``DuplicateKeyError`` (last-wins would be silent)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def strict_loads(
    data: bytes,
    *,
    what: str,
    max_bytes: int,
    max_depth: int,
    error: type[IntegrityError] = ManifestError,
) -> Any:
    """Parse JSON that came from disk or a caller; any defect raises ``error``."""
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, above the cap of {max_bytes}")
    try:
        text = bytes(data).decode("utf-8")
        value = json.loads(text, object_pairs_hook=refuse_duplicates, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise error(f"{what} is nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what} is not valid JSON: {exc}") from exc
    if json_depth(value) > max_depth:
        raise error(f"{what} is nested deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(text) and not _all_utf8(value):
        raise error(f"{what} contains an unpaired UTF-16 surrogate escape (not valid Unicode text)")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _all_utf8(value: Any) -> bool:
    """Every string (keys included) of a parsed JSON value has a UTF-8 form."""
    stack = [value]
    while stack:
        item = stack.pop()
        strings: list[Any] = [item] if isinstance(item, str) else []
        if isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def require_keys(obj: object, what: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check that ``obj`` is an object with exactly the required (+ optional) keys."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} must be a JSON object, got {type(obj).__name__}")
    missing = required - obj.keys()
    if missing:
        raise ManifestError(f"{what} is missing field(s): {', '.join(sorted(missing))}")
    unknown = obj.keys() - required - optional
    if unknown:
        raise ManifestError(
            f"{what} has unknown field(s): {', '.join(sorted(unknown))[:200]} "
            "(format v1 readers refuse fields they do not understand)"
        )
    return obj


def get_int(obj: dict[str, Any], key: str, what: str, lo: int, hi: int) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ManifestError(f"{what}.{key} must be an integer in {lo}..{hi}, got {value!r:.40}")
    return value


def get_str(obj: dict[str, Any], key: str, what: str, max_len: int) -> str:
    value = obj[key]
    if not isinstance(value, str) or len(value.encode("utf-8")) > max_len:
        raise ManifestError(f"{what}.{key} must be a string of at most {max_len} bytes")
    return value
