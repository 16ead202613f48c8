"""Model-directory records of a format v2 manifest: assets, shards and their header metadata.

Owns: ``AssetEntry`` (a non-tensor file of a model directory: config, tokenizer, model card,
stored as frames like a tensor's bytes), ``ShardEntry`` (one safetensors file of the source:
its file name, the tensors it held and its ``__metadata__`` header, kept exactly), the path
rules both obey, the reserved header namespace and reserved tensor names (docs/design.md §4.5).
Does not own reading or writing files (``appliance.sources`` and ``appliance.store.assets``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import LimitExceededError, ManifestError, ReservedNameError
from appliance.format.canonical import canonical_bytes, get_int, require_keys
from appliance.format.digest import Digest
from appliance.format.frame import FrameRef
from appliance.format.shown import shown
from appliance.limits import DEFAULT_LIMITS, Limits

INDEX_NAME = "model.safetensors.index.json"
HEADER_NAMESPACE = "appliance."  # appliance's own safetensors header keys; never kept from a source
RESERVED_TENSOR_NAMES = frozenset({"__metadata__"})  # safetensors' header key: not a tensor name
SHARD_SUFFIX = ".safetensors"
EMPTY_WEIGHT_MAP = "has an empty weight_map: it names no tensors, nothing would be committed"
_FORBIDDEN_CHARS = {"\\", "\x00"}
_SHARD_NAME = re.compile(r"[^/\\\x00]+\.safetensors")
_NUMBERED = re.compile(r"(?P<prefix>.+)-(?P<i>[0-9]+)-of-(?P<n>[0-9]+)\.safetensors")  # transformers' shard names
SINGLE_FILE = "model.safetensors"  # the weights file an index replaces; loaders prefer it over the index
INDEX_REMEDY = (
    "fix model.safetensors.index.json so that its weight_map names exactly the tensors the shards hold, "
    "each in its shard, and every shard of the set (or save the model again, e.g. with save_pretrained)"
)


def _unprintable(bad: set[str]) -> str:
    """What is wrong with a label's characters, in words (a file name's undecodable bytes are surrogates)."""
    if any(unicodedata.category(c) == "Cs" for c in bad):
        return "is not valid UTF-8 (bytes that encode no character)"
    if bad <= {"\\"}:
        return "contains a backslash"
    return "contains control or format characters" + (" and a backslash" if "\\" in bad else "")


def check_label(value: object, what: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """A tensor name or asset path: a relative, normalised, printable label (§4.3 rule 1).

    Refused: non-strings, empty, over the cap, control characters (incl. NUL), backslashes,
    absolute paths, ``..``/``.`` components, empty components, drive letters, and names that
    are not NFC (two spellings of one name could otherwise alias).
    """
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{what} must be a non-empty string, got {shown(value, 60)}")
    if len(value.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
        raise ManifestError(f"{what} is longer than {limits.max_name_bytes} bytes: {shown(value, 60)}")
    bad = {c for c in value if unicodedata.category(c).startswith("C") or c in _FORBIDDEN_CHARS}
    if bad:
        raise ManifestError(f"{what} {_unprintable(bad)}: {shown(value)}")
    if unicodedata.normalize("NFC", value) != value:
        raise ManifestError(f"{what} is not in Unicode NFC form: {shown(value)}")
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or (len(value) > 1 and value[1] == ":"):
        raise ManifestError(f"{what} looks like a path (absolute, '..', '.' or empty part): {shown(value)}")
    return value


def is_shard_name(name: object) -> bool:
    """A plain ``*.safetensors`` file name directly inside the model directory."""
    return isinstance(name, str) and bool(_SHARD_NAME.fullmatch(name)) and not name.startswith(".")


def check_header_metadata(value: object, what: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, str]:
    """A safetensors ``__metadata__`` map as kept: str -> str, none in appliance's namespace."""
    if not isinstance(value, dict):
        raise ManifestError(f"{what} must be a JSON object of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise ManifestError(f"{what} must map non-empty strings to strings, got {key!r:.40}: {item!r:.40}")
        if key.startswith(HEADER_NAMESPACE):
            raise ManifestError(f"{what} holds {key!r:.60}, in appliance's reserved namespace {HEADER_NAMESPACE}*")
    if len(canonical_bytes(value)) > limits.metadata_max_bytes:
        raise LimitExceededError(f"{what} is larger than {limits.metadata_max_bytes} bytes")
    return dict(value)


def source_header_metadata(header: Mapping[str, str]) -> dict[str, str]:
    """What a source file's ``__metadata__`` contributes: every key outside ``appliance.*``.

    Keys in appliance's namespace describe an earlier restore or export (generation, metadata,
    export info) and are recorded in the manifest itself; they are written afresh on restore.
    """
    return {k: v for k, v in header.items() if not k.startswith(HEADER_NAMESPACE)}


@dataclass(frozen=True)
class AssetEntry:
    """A non-tensor file of a model directory, kept byte for byte."""

    path: str  # relative POSIX path inside the directory (§4.5 rules)
    size: int  # bytes
    digest: Digest  # SHA-256 of the whole file, checked after every frame was checked
    frames: tuple[FrameRef, ...]
    executable: bool = False  # the owner-execute bit (scripts shipped with a model)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.digest.hex,
            "frames": [f.to_dict() for f in self.frames],
        }
        if self.executable:
            out["executable"] = True
        return out

    @classmethod
    def from_dict(cls, obj: object, limits: Limits = DEFAULT_LIMITS) -> AssetEntry:
        d = require_keys(obj, "asset", {"path", "size", "sha256", "frames"}, frozenset({"executable"}))
        path = check_label(d["path"], "asset path", limits)
        frames = d["frames"]
        if not isinstance(frames, list) or len(frames) > limits.max_frames:
            raise ManifestError(f"asset {path!r}: frames must be a list of at most {limits.max_frames}")
        if d.get("executable", True) is not True:
            raise ManifestError(f"asset {path!r}: executable is true or absent")
        return cls(
            path=path,
            size=get_int(d, "size", f"asset {path!r}", 0, limits.asset_max_bytes),
            digest=Digest.parse(d["sha256"], "asset.sha256"),
            frames=tuple(FrameRef.from_dict(f, limits) for f in frames),
            executable="executable" in d,
        )


@dataclass(frozen=True)
class ShardEntry:
    """One safetensors file of the source: its name, its tensors (in file order) and header."""

    file: str
    tensors: tuple[str, ...]
    header_metadata: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tensors": list(self.tensors), "header_metadata": dict(self.header_metadata)}

    @classmethod
    def from_dict(cls, obj: object, limits: Limits = DEFAULT_LIMITS) -> ShardEntry:
        d = require_keys(obj, "shard", {"file", "tensors", "header_metadata"})
        if not is_shard_name(d["file"]):
            raise ManifestError(f"shard file {d['file']!r:.80} is not a plain *.safetensors file name")
        names = d["tensors"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ManifestError(f"shard {d['file']!r}: tensors must be a list of tensor names")
        meta = check_header_metadata(d["header_metadata"], f"shard {d['file']!r} header_metadata", limits)
        return cls(d["file"], tuple(names), meta)


def index_defect(weight_map: Mapping[str, str], held: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """How an index's ``weight_map`` (tensor -> shard) disagrees with what the shards hold, or None.

    Returns (what is wrong, the tensors concerned), checked in this order: an empty map; tensors
    the map names that no shard holds; tensors a shard holds that the map does not name;
    tensors the map places in a shard other than the one holding them. (A tensor in two shards
    is caught while reading the shards, before ``held`` exists.)
    """
    if not weight_map:
        return EMPTY_WEIGHT_MAP, []
    missing = [n for n in weight_map if n not in held]
    if missing:
        return "weight_map names tensors no shard holds", missing
    unnamed = [n for n in held if n not in weight_map]
    if unnamed:
        return "shards hold tensors the index does not name", unnamed
    moved = [n for n, shard in weight_map.items() if held[n] != shard]
    if moved:
        return "weight_map puts tensors in shards that do not hold them", moved
    return None


def left_out_shards(indexed: Iterable[str], present: Iterable[str], shown: int = 5) -> tuple[list[str], int]:
    """Weight files an index leaves out: present beside it, or missing from its numbered set.

    ``indexed`` are the shard files the ``weight_map`` names, ``present`` the ``*.safetensors``
    files directly in the directory. Left out: ``model.safetensors`` when present (loaders would
    read it and ignore the index); a present file numbered like an indexed shard
    (``PREFIX-i-of-n.safetensors`` with PREFIX ``model`` or an indexed shard's) that the map does not name;
    each number 1..n of an indexed set ``PREFIX-…-of-n`` the map does not name, present or not;
    and an indexed shard numbered outside its own set (``-00000-of-``, ``-00004-of-00003``).
    Files of another name (e.g. Mistral's ``consolidated*.safetensors``) are not this index's.
    Returns (the first ``shown`` names, sorted; how many there are in all) — counted, never
    enumerated, so an index claiming ``-of-99999999`` costs nothing.
    """
    named = set(indexed)
    sets: dict[tuple[str, str], set[int]] = {}  # (prefix, n as written) -> indexed numbers
    widths: dict[tuple[str, str], int] = {}
    odd: set[str] = set()
    for name in named:
        m = _NUMBERED.fullmatch(name)
        if m:
            key, i = (m["prefix"], m["n"]), int(m["i"])
            numbers = sets.setdefault(key, set())
            widths[key] = len(m["i"])
            if 1 <= i <= int(m["n"]):
                numbers.add(i)
            else:
                odd.add(name)
    prefixes = {SINGLE_FILE.removesuffix(SHARD_SUFFIX)} | {prefix for prefix, _ in sets}
    extra = set(present) - named
    odd |= {SINGLE_FILE} & extra
    taken: set[tuple[str, str, int]] = set()  # a present, unindexed file fills its gap: listed once
    for name in extra:
        m = _NUMBERED.fullmatch(name)
        if m is not None and m["prefix"] in prefixes:
            odd.add(name)
            if (m["prefix"], m["n"]) in sets and 1 <= int(m["i"]) <= int(m["n"]):
                taken.add((m["prefix"], m["n"], int(m["i"])))
    total = len(odd) + sum(int(n) - len(numbers) for (_, n), numbers in sets.items()) - len(taken)
    gaps: list[str] = []
    for (prefix, n), numbers in sorted(sets.items()):
        i = 1
        while len(gaps) < shown and i <= int(n):
            if i not in numbers and (prefix, n, i) not in taken:
                gaps.append(f"{prefix}-{i:0{widths[prefix, n]}d}-of-{n}.safetensors")
            i += 1
    return sorted(odd | set(gaps))[:shown], total


def renumber_shards(files: Sequence[str]) -> list[str]:
    """New names for the shards a restore writes (in order), so that their numbering is whole.

    Each set ``PREFIX-i-of-n.safetensors`` becomes ``PREFIX-1-of-m`` .. ``PREFIX-m-of-m`` for the
    m of its files written (same order and digit widths); other names are kept. A full, consistent
    set maps to itself. Should two names collide, every shard is named
    ``model-0000i-of-0000N.safetensors`` (transformers' spelling) instead.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for position, name in enumerate(files):
        m = _NUMBERED.fullmatch(name)
        if m is not None:
            groups.setdefault((m["prefix"], m["n"]), []).append(position)
    out = list(files)
    for (prefix, n), positions in groups.items():
        for i, position in enumerate(positions, start=1):
            width = len(_NUMBERED.fullmatch(files[position])["i"])  # type: ignore[index]
            out[position] = f"{prefix}-{i:0{width}d}-of-{len(positions):0{len(n)}d}.safetensors"
    if len(set(out)) != len(out):
        return [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    return out


def validate_directory(
    tensor_names: Iterable[str], assets: tuple[AssetEntry, ...], shards: tuple[ShardEntry, ...], limits: Limits
) -> None:
    """Cross-record rules of §4.5: each tensor in exactly one shard, one file per path, sizes tiled."""
    names = list(tensor_names)
    if shards:
        held = [n for s in shards for n in s.tensors]
        if len(held) != len(set(held)) or set(held) != set(names):
            raise ManifestError("shards must list every tensor of the manifest exactly once")
        files = [s.file for s in shards]
        if len(files) != len(set(files)):
            raise ManifestError("two shard records name the same file")
    if len(assets) > limits.max_assets:
        raise LimitExceededError(f"manifest has {len(assets)} assets, above the cap of {limits.max_assets}")
    taken = {s.file for s in shards} | {INDEX_NAME}
    dirs: set[str] = set()
    for asset in assets:
        if asset.path in taken:
            raise ManifestError(f"asset path {asset.path!r:.80} is listed twice or names a shard or the index")
        taken.add(asset.path)
        parts = asset.path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if sum(f.raw_size for f in asset.frames) != asset.size:
            raise ManifestError(f"asset {asset.path!r:.80}: frames do not cover its {asset.size} bytes exactly")
        if any(f.codec.planes for f in asset.frames):
            raise ManifestError(f"asset {asset.path!r:.80}: asset frames are byte streams (no byte grouping)")
    clash = sorted(dirs & taken)
    if clash:
        raise ManifestError(f"asset path {clash[0]!r:.80} is both a file and a directory")
    total = sum(a.size for a in assets)
    if total > limits.assets_max_total_bytes:
        raise LimitExceededError(f"assets total {total} bytes, above the cap of {limits.assets_max_total_bytes}")


def check_reserved_names(names: Iterable[str]) -> None:
    """Refuse names that cannot round-trip through safetensors, before anything is written."""
    reserved = sorted(RESERVED_TENSOR_NAMES & set(names))
    if reserved:
        raise ReservedNameError(f"tensor name {reserved[0]!r} is reserved (safetensors' header key)")
