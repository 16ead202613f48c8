"""Pure builders of valid format objects for tests (no torch, no disk)."""

from __future__ import annotations

import hashlib

from appliance.format.codec_name import CodecSpec
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef, Manifest, TensorEntry


def digest(tag: str) -> Digest:
    return Digest(hashlib.sha256(tag.encode()).hexdigest())


def frame(tag: str, raw_size: int = 64, codec: str = "bg2+zstd-1", base: FrameRef | None = None) -> FrameRef:
    return FrameRef(
        digest=digest("stored-" + tag),
        size=raw_size // 2,
        raw_digest=digest("raw-" + tag),
        raw_size=raw_size,
        codec=CodecSpec.parse(codec),
        base=base.digest if base else None,
        depth=base.depth + 1 if base else 0,
    )


def manifest(**overrides: object) -> Manifest:
    base = frame("base")
    delta = frame("delta", codec="xor+bg2+zstd-1", base=base)
    fields: dict[str, object] = {
        "model": "test-model",
        "generation": 3,
        "parent": digest("parent"),
        "created": "2026-11-23T00:00:00Z",
        "frame_size": 64,
        "policy": "compact",
        "tensors": (
            TensorEntry("w", "bfloat16", (2, 32), (frame("w0"), delta)),
            TensorEntry("scalar", "int64", (), (frame("s", raw_size=8, codec="id"),)),
            TensorEntry("empty", "float32", (0, 4), ()),
        ),
        "bases": (base,),
        "metadata": {"step": 7, "rng": [1, 2, 3]},
    }
    fields.update(overrides)
    return Manifest(**fields)  # type: ignore[arg-type]
