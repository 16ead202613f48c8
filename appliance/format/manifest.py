"""The checkpoint manifest (format v1): what a checkpoint holds and where each byte is.

Owns: ``FrameRef``, ``TensorEntry``, ``Manifest``; their ``to_dict``/``from_dict``; every
structural rule a reader must check before trusting a single frame (see docs/design.md §4).
Does not own: signatures (``statement`` + ``appliance.signing``) or reading frames.

Laws (property-tested): ``Manifest.from_dict(m.to_dict()) == m`` and
``canonical_bytes(Manifest.from_dict(d).to_dict()) == canonical_bytes(d)`` for valid ``d``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import LimitExceededError, ManifestError
from appliance.format.canonical import canonical_bytes, get_int, get_str, require_keys
from appliance.format.codec_name import CodecSpec
from appliance.format.digest import Digest
from appliance.format.dtypes import DType, dtype_named
from appliance.format.validate import check_metadata, check_shape, validate_tensor_name
from appliance.limits import DEFAULT_LIMITS, Limits

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FrameRef", "Manifest", "TensorEntry", "validate_tensor_name"]

FORMAT_NAME = "appliance.checkpoint"
FORMAT_VERSION = 1
POLICIES = ("fast", "compact")
MAX_GENERATION = 2**63 - 1


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


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    frames: tuple[FrameRef, ...]

    @property
    def dtype_info(self) -> DType:
        return dtype_named(self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype_info.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "frames": [f.to_dict() for f in self.frames],
        }

    @classmethod
    def from_dict(cls, obj: object, limits: Limits = DEFAULT_LIMITS) -> TensorEntry:
        d = require_keys(obj, "tensor", {"name", "dtype", "shape", "frames"})
        name = validate_tensor_name(d["name"], limits)
        dtype = dtype_named(d["dtype"]).name
        shape = d["shape"]
        if not isinstance(shape, list):
            raise ManifestError(f"tensor {name!r}: shape must be a list of at most {limits.max_tensor_dims} dims")
        check_shape(name, shape, ManifestError, limits)
        frames = d["frames"]
        if not isinstance(frames, list) or len(frames) > limits.max_frames:
            raise ManifestError(f"tensor {name!r}: frames must be a list of at most {limits.max_frames}")
        entry = cls(name, dtype, tuple(shape), tuple(FrameRef.from_dict(f, limits) for f in frames))
        limits.check(f"tensor {name!r} size in bytes", entry.nbytes, limits.tensor_max_bytes)
        return entry


@dataclass(frozen=True)
class Manifest:
    """A checkpoint: tensors (with their frames), JSON metadata, and its place in history."""

    model: str
    generation: int
    parent: Digest | None
    created: str
    frame_size: int
    policy: str
    tensors: tuple[TensorEntry, ...]
    bases: tuple[FrameRef, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_manifest(self, DEFAULT_LIMITS)

    # --- derived views ---------------------------------------------------------------------

    def all_frames(self) -> Iterator[FrameRef]:
        """Every frame record, tensor frames first, then delta bases; may repeat digests."""
        for tensor in self.tensors:
            yield from tensor.frames
        yield from self.bases

    def frame_index(self) -> dict[Digest, FrameRef]:
        return {f.digest: f for f in self.all_frames()}

    @property
    def raw_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def stored_bytes(self) -> int:
        """Bytes a slot needs for this checkpoint (unique frames, bases included)."""
        return sum(f.size for f in self.frame_index().values())

    def tensor(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def digest(self) -> Digest:
        """The manifest id: SHA-256 of its canonical JSON (what ``parent`` points at)."""
        return Digest.of(canonical_bytes(self.to_dict()))

    # --- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": self.model,
            "generation": self.generation,
            "parent": self.parent.hex if self.parent else None,
            "created": self.created,
            "frame_size": self.frame_size,
            "policy": self.policy,
            "hash": "sha256",
            "tensors": [t.to_dict() for t in self.tensors],
            "bases": [b.to_dict() for b in self.bases],
            "metadata": dict(self.metadata),
            "totals": self.totals(),
        }

    def totals(self) -> dict[str, int]:
        return {
            "tensors": len(self.tensors),
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
        }

    @classmethod
    def from_dict(cls, obj: object, limits: Limits = DEFAULT_LIMITS) -> Manifest:
        keys = {
            "format",
            "version",
            "model",
            "generation",
            "parent",
            "created",
            "frame_size",
            "policy",
            "hash",
        }
        d = require_keys(obj, "manifest", keys | {"tensors", "bases", "metadata", "totals"})
        if d["format"] != FORMAT_NAME:
            raise ManifestError(f"not a checkpoint manifest (format {d['format']!r:.40})")
        if d["version"] != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format version {d['version']!r:.20} is not supported (this reader knows v{FORMAT_VERSION})",
                remedy="upgrade appliance on this node, or re-export the checkpoint in format v1",
            )
        if d["hash"] != "sha256":
            raise ManifestError(f"unknown hash algorithm {d['hash']!r:.20}")
        tensors, bases = d["tensors"], d["bases"]
        if not isinstance(tensors, list) or len(tensors) > limits.max_tensors:
            raise ManifestError(f"manifest.tensors must be a list of at most {limits.max_tensors}")
        if not isinstance(bases, list) or len(bases) > limits.max_frames:
            raise ManifestError(f"manifest.bases must be a list of at most {limits.max_frames}")
        metadata = d["metadata"]
        if not isinstance(metadata, dict):
            raise ManifestError("manifest.metadata must be a JSON object")
        manifest = cls(
            model=get_str(d, "model", "manifest", 256),
            generation=get_int(d, "generation", "manifest", 1, MAX_GENERATION),
            parent=None if d["parent"] is None else Digest.parse(d["parent"], "manifest.parent"),
            created=get_str(d, "created", "manifest", 64),
            frame_size=get_int(d, "frame_size", "manifest", 16, limits.frame_max_raw_bytes),
            policy=get_str(d, "policy", "manifest", 32),
            tensors=tuple(TensorEntry.from_dict(t, limits) for t in tensors),
            bases=tuple(FrameRef.from_dict(b, limits) for b in bases),
            metadata=metadata,
        )
        if limits is not DEFAULT_LIMITS:  # __post_init__ already checked the default caps
            validate_manifest(manifest, limits)
        if d["totals"] != manifest.totals():
            raise ManifestError("manifest.totals do not match the tensor table")
        return manifest


def validate_manifest(m: Manifest, limits: Limits) -> None:
    """Structural rules that make every later step safe; see docs/design.md §4.3."""
    if not m.model or not m.model.isprintable():
        raise ManifestError(f"manifest.model must be a printable, non-empty string: {m.model!r:.60}")
    if not 1 <= m.generation <= MAX_GENERATION:
        raise ManifestError(f"manifest.generation {m.generation} is outside 1..2^63-1")
    if m.frame_size % 16 or not 16 <= m.frame_size <= limits.frame_max_raw_bytes:
        raise ManifestError(f"manifest.frame_size {m.frame_size} must be a multiple of 16 within the frame cap")
    if m.policy not in POLICIES:
        raise ManifestError(f"manifest.policy {m.policy!r:.20} is not one of {', '.join(POLICIES)}")
    check_metadata(m.metadata, LimitExceededError, limits, what="manifest.metadata")  # the writer's check too
    names = [t.name for t in m.tensors]
    if len(set(names)) != len(names):
        raise ManifestError("manifest has duplicate tensor names")
    for tensor in m.tensors:
        _validate_tensor_frames(tensor, m.frame_size)
    _validate_frame_graph(m, limits)


def _validate_tensor_frames(tensor: TensorEntry, frame_size: int) -> None:
    dtype = tensor.dtype_info
    covered = 0
    for frame in tensor.frames:
        if frame.raw_size > frame_size or frame.raw_size % dtype.itemsize:
            raise ManifestError(
                f"tensor {tensor.name!r}: frame of {frame.raw_size} bytes is not a whole number of "
                f"{dtype.name} elements within frame_size {frame_size}"
            )
        if frame.codec.planes not in (0, dtype.planes):
            raise ManifestError(f"tensor {tensor.name!r}: codec {frame.codec} does not fit dtype {dtype.name}")
        covered += frame.raw_size
    if covered != tensor.nbytes:
        raise ManifestError(
            f"tensor {tensor.name!r}: frames cover {covered} bytes but {tensor.dtype}{list(tensor.shape)} "
            f"needs {tensor.nbytes} (holes or overlap)"
        )


def _validate_frame_graph(m: Manifest, limits: Limits) -> None:
    """One record per digest; every base resolves, has the same size and a shorter chain."""
    index: dict[Digest, FrameRef] = {}
    for frame in m.all_frames():
        if index.setdefault(frame.digest, frame) != frame:
            raise ManifestError(f"frame {frame.digest.short()} is described twice, differently")
        if frame.codec.planes and frame.raw_size % frame.codec.planes:
            raise ManifestError(f"frame {frame.digest.short()}: size is not a multiple of its planes")
    used_as_base: set[Digest] = set()
    for frame in index.values():
        if frame.base is None:
            continue
        base = index.get(frame.base)
        if base is None:
            raise ManifestError(f"frame {frame.digest.short()}: delta base {frame.base.short()} is not in the manifest")
        if base.raw_size != frame.raw_size or base.depth != frame.depth - 1:
            raise ManifestError(f"frame {frame.digest.short()}: delta base has another size or chain depth")
        if frame.depth > limits.max_delta_depth:
            raise ManifestError(f"frame {frame.digest.short()}: delta chain deeper than {limits.max_delta_depth}")
        used_as_base.add(base.digest)
    tensor_frames = {f.digest for t in m.tensors for f in t.frames}
    if len({b.digest for b in m.bases}) != len(m.bases):
        raise ManifestError("bases lists a frame twice")
    for base in m.bases:
        if base.digest not in used_as_base or base.digest in tensor_frames:
            raise ManifestError(f"bases lists frame {base.digest.short()} that is not (only) a delta base")
