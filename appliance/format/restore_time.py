"""Restore-time arithmetic and the ``auto`` policy rule: pure functions of measured rates.

Owns: ``DeviceRates`` (what a short probe measured on this device), ``CheckpointShape`` (what a
manifest says about bytes per codec), the estimate of a verified restore's duration, and
``choose_policy``. Does not own measuring (``appliance.store.probe``) or reading manifests.

Model (docs/performance.md, "restore-time report"). A verified restore reads every stored
byte, hashes every stored byte (SHA-256), decodes every frame and writes the destination.
The CPU stages run on ``cores`` workers in parallel; storage reads overlap them:

    cpu_seconds  = stored/read_copy + stored/hash + sum(raw_c/decode_c) + raw/touch   (1 core)
    expected     = max(stored/read_cold, cpu_seconds / cores)
    worst        = stored/read_cold + cpu_seconds / cores        (no overlap at all)

Zero-copy frames (``id`` frames mapped in place) pay only the hash. ``worst`` for a boot also
adds the fallback candidate (the newest checkpoint fails on its last frame, the other slot is
restored from scratch). Every rate is bytes per second on one core unless named otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ConfigError


@dataclass(frozen=True)
class DeviceRates:
    """Rates measured on this device (bytes/s); ``decode`` is per codec name, on raw bytes."""

    cores: int
    hash: float
    read_copy: float  # page cache -> process memory, one core
    read_cold: float  # storage -> page cache, whole device
    touch: float  # first write to fresh process memory, one core
    decode: Mapping[str, float] = field(default_factory=dict)
    gpu_decoder: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "hash": round(self.hash),
            "read_copy": round(self.read_copy),
            "read_cold": round(self.read_cold),
            "touch": round(self.touch),
            "decode": {k: round(v) for k, v in sorted(self.decode.items())},
            "gpu_decoder": self.gpu_decoder,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceRates:
        try:
            rates = cls(
                cores=int(d["cores"]),
                hash=float(d["hash"]),
                read_copy=float(d["read_copy"]),
                read_cold=float(d["read_cold"]),
                touch=float(d["touch"]),
                decode={str(k): float(v) for k, v in dict(d.get("decode", {})).items()},
                gpu_decoder=bool(d.get("gpu_decoder", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"device profile is malformed: {exc}") from exc
        if rates.cores < 1 or min(rates.hash, rates.read_copy, rates.read_cold, rates.touch) <= 0:
            raise ConfigError("device profile has a non-positive rate")
        return rates


@dataclass(frozen=True)
class CheckpointShape:
    """Bytes a restore must move: per codec name, (stored, raw); ``mapped_raw`` zero-copy."""

    by_codec: Mapping[str, tuple[int, int]]
    mapped_raw: int = 0

    @property
    def stored(self) -> int:
        return sum(s for s, _ in self.by_codec.values())

    @property
    def raw(self) -> int:
        return sum(r for _, r in self.by_codec.values())


@dataclass(frozen=True)
class Estimate:
    expected: float
    worst: float
    storage_seconds: float
    cpu_seconds: float  # summed over cores
    bound: str  # "storage" | "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected_seconds": round(self.expected, 3),
            "worst_seconds": round(self.worst, 3),
            "storage_seconds": round(self.storage_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "bound": self.bound,
        }


def decode_rate(rates: DeviceRates, codec: str) -> float:
    """A codec's decode rate; unmeasured codecs borrow the slowest measured one (pessimistic)."""
    if codec == "id":
        return 0.0  # a copy, accounted as read_copy + touch
    if codec in rates.decode:
        return rates.decode[codec]
    return min(rates.decode.values(), default=rates.hash)


def estimate(shape: CheckpointShape, rates: DeviceRates, *, cold: bool = True) -> Estimate:
    """Expected and no-overlap restore time of one checkpoint on this device."""
    stored = shape.stored
    copied_raw = max(0, shape.raw - shape.mapped_raw)
    cpu = stored / rates.hash + copied_raw / rates.touch
    for codec, (s, r) in shape.by_codec.items():
        rate = decode_rate(rates, codec)
        cpu += r / rate if rate > 0 else 0.0
        if codec != "id" or shape.mapped_raw == 0:
            cpu += s / rates.read_copy
    storage = stored / rates.read_cold if cold else 0.0
    per_core = cpu / rates.cores
    expected = max(storage, per_core)
    return Estimate(expected, storage + per_core, storage, cpu, "storage" if storage >= per_core else "cpu")


def choose_policy(rates: DeviceRates, ratio: float, fast_codec: str = "id", compact_codec: str = "") -> str:
    """``auto``: the policy whose verified restore of the same model is expected to be faster.

    ``ratio`` is the compact policy's expected stored/raw ratio (e.g. 1/1.49). A GPU decoder
    makes decoding free for the CPU, so compact then wins unless storage is faster than
    hashing. Ties go to ``compact`` (it also saves space).
    """
    raw = 1 << 30
    fast = estimate(CheckpointShape({fast_codec: (raw, raw)}, mapped_raw=raw), rates)
    codec = compact_codec or min(rates.decode, key=lambda c: -rates.decode[c], default="id")
    stored = int(raw * ratio)
    compact_rates = rates
    if rates.gpu_decoder:
        compact_rates = DeviceRates(rates.cores, rates.hash, rates.read_copy, rates.read_cold, rates.touch, {}, True)
        codec = "id"  # the CPU only reads and hashes; the GPU decodes
    compact = estimate(CheckpointShape({codec: (stored, raw if codec != "id" else stored)}), compact_rates)
    return "fast" if fast.expected < compact.expected * 0.97 else "compact"
