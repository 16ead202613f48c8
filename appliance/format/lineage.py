"""The manifest's ``lineage`` field (format v2) and the tensor-layout rule lineage is judged by.

Owns: ``Lineage`` (the release-signed base a device-signed checkpoint descends from, carried
whole so the proof survives garbage collection of the base and travels with the checkpoint)
and ``layout_of`` / ``same_layout``. Does not own verifying the embedded release bundle's
signature or deciding who may sign what (``appliance.signing.lineage``). Pure: no I/O.

Wire form (docs/design.md §4.1, §5.4)::

    "lineage": {"release_bundle": "<base64 of the release-signed bundle file>", "device": "<device id>"}
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.errors import ManifestError
from appliance.format.canonical import get_str, require_keys
from appliance.format.shown import shown
from appliance.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from appliance.format.manifest import TensorEntry

Layout = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (dtype, shape)
DEVICE_ID_MAX = 256


@dataclass(frozen=True)
class Lineage:
    release_bundle: bytes  # exact bytes of the release-signed bundle of the base checkpoint
    device: str  # the device id of the device key that signs this checkpoint

    def __post_init__(self) -> None:
        if not self.release_bundle:
            raise ManifestError("lineage.release_bundle is empty")
        if not self.device or not self.device.isprintable() or len(self.device) > DEVICE_ID_MAX:
            raise ManifestError(f"lineage.device must be 1-{DEVICE_ID_MAX} printable characters")

    def to_dict(self) -> dict[str, Any]:
        return {"release_bundle": base64.b64encode(self.release_bundle).decode(), "device": self.device}

    @classmethod
    def from_dict(cls, obj: object, limits: Limits = DEFAULT_LIMITS) -> Lineage:
        d = require_keys(obj, "lineage", {"release_bundle", "device"})
        encoded = d["release_bundle"]
        if not isinstance(encoded, str) or len(encoded) > limits.manifest_max_bytes:
            raise ManifestError("lineage.release_bundle must be a base64 string within the bundle cap")
        try:
            bundle = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ManifestError(f"lineage.release_bundle is not valid base64: {exc}") from exc
        return cls(bundle, get_str(d, "device", "lineage", DEVICE_ID_MAX))


def layout_of(tensors: tuple[TensorEntry, ...]) -> Layout:
    return {t.name: (t.dtype, t.shape) for t in tensors}


def layout_difference(base: Layout, derived: Layout) -> str | None:
    """``None`` when both have the same tensor names, dtypes and shapes; else what differs."""
    added, removed = sorted(derived.keys() - base.keys()), sorted(base.keys() - derived.keys())
    if added or removed:
        return f"tensors added {added[:3]!r:.120}, removed {removed[:3]!r:.120}"
    for name in sorted(base):
        if base[name] != derived[name]:
            (bd, bs), (dd, ds) = base[name], derived[name]
            return f"tensor {shown(name)} is {dd}{list(ds)!r:.60}, the release base has {bd}{list(bs)!r:.60}"
    return None


def describe_layout_change(parent: Layout, source: Layout, shown: int = 3) -> str | None:
    """``None`` when ``source`` has the parent's tensor names, dtypes and shapes; else how it differs.

    Used to refuse committing another architecture over a store's model (docs/design.md §4.5
    "Layout rule"): counts of tensors added, removed and changed, each with up to ``shown`` names.
    """
    added, removed = sorted(source.keys() - parent.keys()), sorted(parent.keys() - source.keys())
    changed = sorted(n for n in parent.keys() & source.keys() if parent[n] != source[n])
    if not (added or removed or changed):
        return None

    def part(what: str, names: list[str], show: Callable[[str], str]) -> str:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return f"{len(names)} {what} ({', '.join(show(n) for n in names[:shown])}{more})"

    def shape(layout: Layout, name: str) -> str:
        dtype, dims = layout[name]
        return f"{dtype}{list(dims)}"

    parts = []
    if added:
        parts.append(part("added", added, lambda n: f"{n!r:.80}"))
    if removed:
        parts.append(part("removed", removed, lambda n: f"{n!r:.80}"))
    if changed:
        parts.append(part("changed", changed, lambda n: f"{n!r:.80}: {shape(parent, n)} -> {shape(source, n)}"))
    return f"{len(source)} tensors vs the parent's {len(parent)}: " + "; ".join(parts)
