"""The frame record: one stored, independently hashed and decoded unit of a checkpoint.

Owns: ``FrameRef`` and its ``to_dict``/``from_dict`` (docs/design.md §4.2). Tensor frames and
asset frames (``appliance.format.directory``) are the same records, stored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import get_int, require_keys
from appliance.format.codec_name import CodecSpec
from appliance.format.digest import Digest
from appliance.limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class FrameRef:
    """One stored frame: an independent unit that is hashed, decoded and placed alone."""

    digest: Digest  # SHA-256 of the stored bytes; also the frame's file name
    size: int  # stored bytes
    raw_digest: Digest  # SHA-256 of the decoded (tensor) bytes
    raw_size: int
    codec: CodecSpec
    base: Digest | None = None  # stored digest of the delta base frame (xor codecs only)
    depth: int = 0  # delta chain length below this frame; 0 for full frames

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "digest": self.digest.hex,
            "size": self.size,
            "raw_digest": self.raw_digest.hex,
            "raw_size": self.raw_size,
            "codec": self.codec.name,
        }
        if self.base is not None:
            out["base"] = self.base.hex
            out["depth"] = self.depth
        return out

    @classmethod
    def from_dict(cls, obj: object, limits: Limits = DEFAULT_LIMITS) -> FrameRef:
        what = "frame"
        d = require_keys(
            obj,
            what,
            {"digest", "size", "raw_digest", "raw_size", "codec"},
            frozenset({"base", "depth"}),
        )
        codec = CodecSpec.parse(d["codec"])
        base = Digest.parse(d["base"], "frame.base") if "base" in d else None
        depth = get_int(d, "depth", what, 1, limits.max_delta_depth) if "depth" in d else 0
        if codec.xor != (base is not None) or (base is None) != (depth == 0):
            raise ManifestError("frame: an xor codec needs base and depth >= 1; other codecs have neither")
        return cls(
            digest=Digest.parse(d["digest"], "frame.digest"),
            size=get_int(d, "size", what, 0, 2 * limits.frame_max_raw_bytes),
            raw_digest=Digest.parse(d["raw_digest"], "frame.raw_digest"),
            raw_size=get_int(d, "raw_size", what, 1, limits.frame_max_raw_bytes),
            codec=codec,
            base=base,
            depth=depth,
        )
