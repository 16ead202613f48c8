"""The checkpoint manifest (format v1, v2): what a checkpoint holds and where each byte is.

Owns: ``FrameRef``, ``TensorEntry``, ``Manifest``; their ``to_dict``/``from_dict``; every
structural rule a reader must check before trusting a single frame (see docs/design.md §4).
Does not own: signatures (``statement`` + ``appliance.signing``) or reading frames.

Versions: v2 adds optional fields (``lineage``: issue 10); a manifest is written as v1 unless it
uses one, so v1 readers and the v1 goldens are unaffected, and v1 is always read.

Laws (property-tested): ``Manifest.from_dict(m.to_dict()) == m`` and
``canonical_bytes(Manifest.from_dict(d).to_dict()) == canonical_bytes(d)`` for valid ``d``.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import LimitExceededError, ManifestError
from appliance.format.canonical import canonical_bytes, get_int, get_str, require_keys
from appliance.format.codec_name import CodecSpec
from appliance.format.digest import Digest
from appliance.format.dtypes import DType, dtype_named
from appliance.format.lineage import Lineage
from appliance.limits import DEFAULT_LIMITS, Limits

FORMAT_NAME = "appliance.checkpoint"
FORMAT_VERSION = 1
READ_VERSIONS = (1, 2)
V2_FIELDS = frozenset({"lineage"})
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
        if not isinstance(shape, list) or len(shape) > limits.max_tensor_dims:
            raise ManifestError(f"tensor {name!r}: shape must be a list of at most {limits.max_tensor_dims} dims")
        for dim in shape:
            if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= limits.tensor_max_bytes:
                raise ManifestError(f"tensor {name!r}: shape has an invalid dimension {dim!r:.40}")
        frames = d["frames"]
        if not isinstance(frames, list) or len(frames) > limits.max_frames:
            raise ManifestError(f"tensor {name!r}: frames must be a list of at most {limits.max_frames}")
        entry = cls(name, dtype, tuple(shape), tuple(FrameRef.from_dict(f, limits) for f in frames))
        limits.check(f"tensor {name!r} size in bytes", entry.nbytes, limits.tensor_max_bytes)
        return entry


_FORBIDDEN_NAME_CHARS = {"\\", "\x00"}


def validate_tensor_name(value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Tensor names are labels, never paths; still, refuse anything that looks like one.

    Refused: non-strings, empty, over the cap, control characters (incl. NUL), backslashes,
    absolute paths, ``..``/``.`` components, empty components, drive letters, and names that
    are not NFC (two spellings of one name could otherwise alias).
    """
    if not isinstance(value, str) or not value:
        raise ManifestError(f"tensor name must be a non-empty string, got {value!r:.60}")
    if len(value.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
        raise ManifestError(f"tensor name is longer than {limits.max_name_bytes} bytes: {value[:60]!r}...")
    if any(unicodedata.category(c).startswith("C") for c in value) or _FORBIDDEN_NAME_CHARS & set(value):
        raise ManifestError(f"tensor name contains control characters or backslashes: {value!r:.80}")
    if unicodedata.normalize("NFC", value) != value:
        raise ManifestError(f"tensor name is not in Unicode NFC form: {value!r:.80}")
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or (len(value) > 1 and value[1] == ":"):
        raise ManifestError(f"tensor name looks like a path (absolute, '..', '.' or empty part): {value!r:.80}")
    return value


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
    lineage: Lineage | None = None  # v2: release-signed base of a device-signed checkpoint

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

    @property
    def version(self) -> int:
        return 2 if self.lineage is not None else FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": self.version,
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
        if self.lineage is not None:
            out["lineage"] = self.lineage.to_dict()
        return out

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
        version = obj.get("version") if isinstance(obj, dict) else None
        optional = V2_FIELDS if version == 2 else frozenset()
        d = require_keys(obj, "manifest", keys | {"tensors", "bases", "metadata", "totals"}, optional)
        if d["format"] != FORMAT_NAME:
            raise ManifestError(f"not a checkpoint manifest (format {d['format']!r:.40})")
        if d["version"] not in READ_VERSIONS or isinstance(d["version"], bool):
            raise ManifestError(
                f"manifest format version {d['version']!r:.20} is not supported (this reader knows v1, v2)",
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
            lineage=Lineage.from_dict(d["lineage"], limits) if "lineage" in d else None,
        )
        if d["version"] != manifest.version:
            raise ManifestError(f"a v{d['version']} manifest must use a v2 field (lineage); write it as v1")
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
    if len(canonical_bytes(dict(m.metadata))) > limits.metadata_max_bytes:
        raise LimitExceededError(f"manifest.metadata is larger than {limits.metadata_max_bytes} bytes")
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
