"""Store configuration (``store.json``): what this store holds and how it writes.

Owns: ``StoreConfig`` and its JSON form. Does not own: trust (``appliance.signing.trust``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from appliance.errors import ConfigError, ManifestError
from appliance.format.canonical import get_int, get_str, require_keys
from appliance.format.manifest import POLICIES
from appliance.limits import MiB

CONFIG_FORMAT = "appliance.store"
CONFIG_VERSION = 1
# 4 MiB frames: perf-anchors.md §2.2 measured ratio flat from 1 to 16 MiB and the fastest
# 2-thread decode at 4 MiB; nvCOMP's Zstd compressor caps chunks at 16 MiB.
DEFAULT_FRAME_SIZE = 4 * MiB
DEFAULT_KEEP = 2
DEFAULT_DELTA_DEPTH = 8


def _get_bool(d: dict[str, Any], key: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"store.json {key} must be true or false")
    return value


@dataclass(frozen=True)
class StoreConfig:
    model: str
    frame_size: int = DEFAULT_FRAME_SIZE
    policy: str = "compact"
    keep: int = DEFAULT_KEEP  # committed checkpoints retained per slot
    max_delta_depth: int = DEFAULT_DELTA_DEPTH
    trust: str = "trust.json"  # relative to the store root, or an absolute path
    zstd_level: int = 1
    vendors: str = "vendors.json"  # model-signing vendor trust (appliance.provenance); same path rule
    encrypt: bool = False  # seal new commits under the keyring's active data key (docs/design.md §14)

    def __post_init__(self) -> None:
        if not self.model or not self.model.isprintable() or len(self.model) > 256:
            raise ConfigError(f"model id must be 1-256 printable characters, got {self.model!r:.60}")
        if self.frame_size % 16 or not 4096 <= self.frame_size <= 64 * MiB:
            raise ConfigError(f"frame_size must be a multiple of 16 between 4 KiB and 64 MiB, got {self.frame_size}")
        if self.policy not in (*POLICIES, "auto"):
            raise ConfigError(f"policy must be one of fast, compact, auto; got {self.policy!r}")
        if not 1 <= self.keep <= 100:
            raise ConfigError(f"keep must be 1..100, got {self.keep}")
        if not 0 <= self.max_delta_depth <= 64:
            raise ConfigError(f"max_delta_depth must be 0..64, got {self.max_delta_depth}")
        if not 1 <= self.zstd_level <= 19:
            raise ConfigError(f"zstd_level must be 1..19, got {self.zstd_level}")

    def with_changes(self, **changes: Any) -> StoreConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "format": CONFIG_FORMAT,
                "version": CONFIG_VERSION,
                "model": self.model,
                "frame_size": self.frame_size,
                "policy": self.policy,
                "keep": self.keep,
                "max_delta_depth": self.max_delta_depth,
                "trust": self.trust,
                "zstd_level": self.zstd_level,
            }
            | ({"vendors": self.vendors} if self.vendors != "vendors.json" else {})
            | ({"encrypt": True} if self.encrypt else {})
        )

    @classmethod
    def from_dict(cls, obj: Any) -> StoreConfig:
        try:
            keys = {
                "format",
                "version",
                "model",
                "frame_size",
                "policy",
                "keep",
                "max_delta_depth",
                "trust",
            }
            d = require_keys(obj, "store.json", keys, frozenset({"zstd_level", "vendors", "encrypt"}))
            if d["format"] != CONFIG_FORMAT or d["version"] != CONFIG_VERSION:
                raise ConfigError("store.json is not a v1 store configuration")
            return cls(
                model=get_str(d, "model", "store", 256),
                frame_size=get_int(d, "frame_size", "store", 16, 64 * MiB),
                policy=get_str(d, "policy", "store", 16),
                keep=get_int(d, "keep", "store", 1, 100),
                max_delta_depth=get_int(d, "max_delta_depth", "store", 0, 64),
                trust=get_str(d, "trust", "store", 4096),
                zstd_level=get_int(d, "zstd_level", "store", 1, 19) if "zstd_level" in d else 1,
                vendors=get_str(d, "vendors", "store", 4096) if "vendors" in d else "vendors.json",
                encrypt=_get_bool(d, "encrypt"),
            )
        except ManifestError as exc:
            raise ConfigError(f"store.json is invalid: {exc.problem}") from exc
