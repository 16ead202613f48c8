"""The checkpoint manifest (format v2; v1 still read): what a checkpoint holds and where each byte is.

Owns: ``TensorEntry``, ``Manifest``; their ``to_dict``/``from_dict``; every structural rule a
reader must check before trusting a single frame (see docs/design.md §4). Frame records live
in ``appliance.format.frame``, the v2 model-directory records (assets, shards with their
header metadata) in ``appliance.format.directory``. Does not own: signatures (``statement`` +
``appliance.signing``) or reading frames.

A manifest keeps the version it was read with: a v1 manifest re-serialises to its v1 bytes
(its digest is what a child's ``parent`` names); v2 adds optional fields, each omitted when
empty, so a v2 manifest without them differs from v1 only in ``version``. v3 (encryption at rest,
docs/design.md §14) is written only for sealed checkpoints: it is v2 plus the required
``encryption`` field, and its frames' ``raw_digest`` is the keyed digest (HMAC-SHA256 under the
data key's identity key), so a v2-only reader refuses it instead of misreading it.

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
from appliance.format.crypto import Encryption
from appliance.format.digest import Digest
from appliance.format.directory import AssetEntry, ShardEntry, check_label, validate_directory
from appliance.format.dtypes import DType, dtype_named
from appliance.format.frame import FrameRef
from appliance.format.lineage import Lineage
from appliance.format.provenance import Provenance
from appliance.format.shown import shown
from appliance.format.validate import check_metadata, check_shape
from appliance.limits import DEFAULT_LIMITS, Limits

FORMAT_NAME = "appliance.checkpoint"
FORMAT_VERSION = 2  # what this writer writes for plain checkpoints
ENCRYPTED_VERSION = 3  # what it writes for sealed checkpoints (``encryption`` present)
READ_VERSIONS = (1, 2, 3)  # what this reader accepts
# optional, omitted when empty (docs/design.md §4.5 directories, §5.3.1 lineage, §5.5 provenance)
V2_FIELDS = ("assets", "shards", "index_metadata", "lineage", "provenance")
POLICIES = ("fast", "compact")
MAX_GENERATION = 2**63 - 1


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
            raise ManifestError(f"tensor {shown(name)}: shape must be a list of at most {limits.max_tensor_dims} dims")
        check_shape(name, shape, ManifestError, limits)
        frames = d["frames"]
        if not isinstance(frames, list) or len(frames) > limits.max_frames:
            raise ManifestError(f"tensor {shown(name)}: frames must be a list of at most {limits.max_frames}")
        entry = cls(name, dtype, tuple(shape), tuple(FrameRef.from_dict(f, limits) for f in frames))
        limits.check(f"tensor {shown(name)} size in bytes", entry.nbytes, limits.tensor_max_bytes)
        return entry


def validate_tensor_name(value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Tensor names are labels, never paths; still, refuse anything that looks like one (§4.3)."""
    return check_label(value, "tensor name", limits)


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
    assets: tuple[AssetEntry, ...] = ()  # v2: non-tensor files of a model directory
    shards: tuple[ShardEntry, ...] = ()  # v2: the source's safetensors files and their headers
    index_metadata: Mapping[str, Any] = field(default_factory=dict)  # v2: the source index's "metadata"
    provenance: Provenance | None = None  # v2: the vendor model-signing signature verified on import (§5.5)
    version: int = FORMAT_VERSION
    lineage: Lineage | None = None  # v2: release-signed base of a device-signed checkpoint (issue 10)
    encryption: Encryption | None = None  # v3: frames sealed under this data key (docs/design.md §14)

    def __post_init__(self) -> None:
        validate_manifest(self, DEFAULT_LIMITS)

    # --- derived views ---------------------------------------------------------------------

    def all_frames(self) -> Iterator[FrameRef]:
        """Every frame record: tensor frames, asset frames, then delta bases; may repeat digests."""
        for tensor in self.tensors:
            yield from tensor.frames
        for asset in self.assets:
            yield from asset.frames
        yield from self.bases

    def content_frames(self) -> Iterator[tuple[str, tuple[FrameRef, ...]]]:
        """(key, frames) of every tensor and asset; asset keys start with NUL (never a tensor name)."""
        for tensor in self.tensors:
            yield tensor.name, tensor.frames
        for asset in self.assets:
            yield asset_key(asset.path), asset.frames

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
        """The manifest id: SHA-256 of its canonical JSON (what ``parent`` points at); computed once per object."""
        cached = self.__dict__.get("_digest")
        if cached is None:  # frozen: nothing the digest covers can change after construction
            cached = Digest.of(canonical_bytes(self.to_dict()))
            object.__setattr__(self, "_digest", cached)
        return cached

    # --- serialisation ---------------------------------------------------------------------

    def asset(self, path: str) -> AssetEntry:
        for a in self.assets:
            if a.path == path:
                return a
        raise KeyError(path)

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
        if self.assets:
            out["assets"] = [a.to_dict() for a in self.assets]
        if self.shards:
            out["shards"] = [s.to_dict() for s in self.shards]
        if self.index_metadata:
            out["index_metadata"] = dict(self.index_metadata)
        if self.lineage is not None:
            out["lineage"] = self.lineage.to_dict()
        if self.provenance is not None:
            out["provenance"] = self.provenance.to_dict()
        if self.encryption is not None:
            out["encryption"] = self.encryption.to_dict()
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
        optional = frozenset(V2_FIELDS) if version == 2 else frozenset()
        if version == ENCRYPTED_VERSION:
            optional = frozenset((*V2_FIELDS, "encryption"))
        d = require_keys(obj, "manifest", keys | {"tensors", "bases", "metadata", "totals"}, optional)
        if d["format"] != FORMAT_NAME:
            raise ManifestError(f"not a checkpoint manifest (format {d['format']!r:.40})")
        if version not in READ_VERSIONS or isinstance(version, bool):
            raise ManifestError(
                f"manifest format version {d['version']!r:.20} is not supported "
                f"(this reader knows v{', v'.join(map(str, READ_VERSIONS))})",
                remedy="upgrade appliance on this node, or re-export the checkpoint in a format it knows",
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
            version=version,
            **_v2_fields(d, limits),
        )
        if limits is not DEFAULT_LIMITS:  # __post_init__ already checked the default caps
            validate_manifest(manifest, limits)
        if d["totals"] != manifest.totals():
            raise ManifestError("manifest.totals do not match the tensor table")
        return manifest


def asset_key(path: str) -> str:
    """The encoder's key for an asset's frames: cannot equal a tensor name (NUL is refused there)."""
    return "\x00asset\x00" + path


def _v2_fields(d: dict[str, Any], limits: Limits) -> dict[str, Any]:
    assets, shards, index_metadata = d.get("assets", []), d.get("shards", []), d.get("index_metadata", {})
    if not isinstance(assets, list) or (not assets and "assets" in d):
        raise ManifestError("manifest.assets must be a non-empty list when present")
    if not isinstance(shards, list) or (not shards and "shards" in d):
        raise ManifestError("manifest.shards must be a non-empty list when present")
    if not isinstance(index_metadata, dict) or (not index_metadata and "index_metadata" in d):
        raise ManifestError("manifest.index_metadata must be a non-empty JSON object when present")
    if len(assets) > limits.max_assets or len(shards) > limits.max_tensors:
        raise LimitExceededError("manifest lists more assets or shards than the caps allow")
    return {
        "assets": tuple(AssetEntry.from_dict(a, limits) for a in assets),
        "shards": tuple(ShardEntry.from_dict(s, limits) for s in shards),
        "index_metadata": index_metadata,
        "lineage": Lineage.from_dict(d["lineage"], limits) if "lineage" in d else None,
        "provenance": Provenance.from_dict(d["provenance"]) if "provenance" in d else None,
        "encryption": Encryption.from_dict(d["encryption"]) if "encryption" in d else None,
    }


def validate_manifest(m: Manifest, limits: Limits) -> None:
    """Structural rules that make every later step safe; see docs/design.md §4.3 and §4.5."""
    if m.version not in READ_VERSIONS:
        raise ManifestError(f"manifest.version {m.version} is not one of {READ_VERSIONS}")
    if m.version == 1 and (m.assets or m.shards or m.index_metadata or m.lineage or m.provenance):
        raise ManifestError("a format v1 manifest cannot hold assets, shards, index metadata, lineage or provenance")
    if (m.version == ENCRYPTED_VERSION) != (m.encryption is not None):
        raise ManifestError("a manifest holds an encryption field exactly when it is format v3")
    if len(canonical_bytes(dict(m.index_metadata))) > limits.metadata_max_bytes:
        raise LimitExceededError(f"manifest.index_metadata is larger than {limits.metadata_max_bytes} bytes")
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
    for asset in m.assets:
        if any(f.raw_size > m.frame_size for f in asset.frames):
            raise ManifestError(f"asset {asset.path!r:.80}: a frame is larger than frame_size {m.frame_size}")
    validate_directory(names, m.assets, m.shards, limits)
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
    tensor_frames = {f.digest for _, frames in m.content_frames() for f in frames}
    if len({b.digest for b in m.bases}) != len(m.bases):
        raise ManifestError("bases lists a frame twice")
    for base in m.bases:
        if base.digest not in used_as_base or base.digest in tensor_frames:
            raise ManifestError(f"bases lists frame {base.digest.short()} that is not (only) a delta base")


__all__ = ["ENCRYPTED_VERSION", "FORMAT_VERSION", "AssetEntry", "FrameRef", "Manifest", "ShardEntry", "TensorEntry"]
