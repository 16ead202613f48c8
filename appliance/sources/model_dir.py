"""Model directories kept whole: their non-tensor files on commit, a loadable directory on restore.

Owns: walking a model directory for assets under the path rules (docs/design.md §4.5), what a
directory commit records besides tensors (``directory_parts``), and writing a restored
checkpoint as a safetensors file or as a complete directory (shards + index + assets)
that ``transformers``' ``from_pretrained`` loads. Does not own parsing safetensors
(``safetensors_io``) or restoring bytes (``appliance.api``).

Path rules for assets: every regular file under the directory except the shards the commit
reads, the index, and the top-level ``.git``/``.cache`` trees (version-control and download
cache bookkeeping, not model content). A symbolic link is followed only when it resolves to a
regular file inside the directory; it is stored as that file's content under the link's own
path (the link itself is not recorded). A link out of the directory, a link to a directory,
a dangling link or a special file is refused with ``AssetError`` naming it, as is a file over
the size caps (``appliance/limits.py``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import torch

from appliance.errors import (
    AssetError,
    ManifestError,
    ModelLayoutError,
    NoValidCheckpointError,
    UsageError,
    VendorSignatureError,
)
from appliance.format.directory import INDEX_NAME, ShardEntry, check_label, renumber_shards
from appliance.format.dtypes import DTYPES
from appliance.format.lineage import describe_layout_change, layout_of
from appliance.format.manifest import Manifest
from appliance.format.provenance import MODEL_SIG
from appliance.limits import DEFAULT_LIMITS
from appliance.sources.safetensors_io import ImportedModel, check_exportable, export_safetensors, inside
from appliance.sources.stable import identity_guard
from appliance.sources.tensors import dtype_name
from appliance.store.assets import AssetSource, DirectoryParts
from appliance.store.reread import SignedShard
from appliance.store.store import Store

SKIPPED_TOP = frozenset({".git", ".cache"})
DEFAULT_HEADER = {"format": "pt"}  # what safetensors.torch and transformers write; loaders require it


def scan_assets(root: Path, skip: frozenset[str]) -> tuple[AssetSource, ...]:
    """Every asset file under ``root`` (sorted by path), excluding ``skip`` (relative paths)."""
    found: list[AssetSource] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        if rel_dir == Path():
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_TOP]
        for name in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
            rel = (rel_dir / name).as_posix()
            if rel in skip:
                continue
            found.append(_asset(root, here / name, rel))
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    if len(found) > DEFAULT_LIMITS.max_assets:
        raise AssetError(f"{root} holds {len(found)} files, above the cap of {DEFAULT_LIMITS.max_assets} assets")
    return tuple(sorted(found, key=lambda a: a.path))


def _asset(root: Path, path: Path, rel: str) -> AssetSource:
    try:
        check_label(rel, "asset path")
    except ManifestError as exc:
        raise AssetError(
            f"{root}: a file's path cannot be stored: {exc.problem}",  # the problem shows the name, escaped
            remedy="rename the file (UTF-8, NFC, no backslash or control characters) or move it out of the directory",
        ) from exc
    target = inside(root, path, AssetError)
    try:
        seen, recheck = identity_guard(target)  # never a mixture of two versions of a file (design §6.2.1)
        mode = target.stat().st_mode
    except OSError as exc:
        raise AssetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if seen.size > DEFAULT_LIMITS.asset_max_bytes:
        raise AssetError(f"{path} is {seen.size} bytes, above the cap of {DEFAULT_LIMITS.asset_max_bytes} per asset")

    def reader() -> BinaryIO:
        recheck()  # still the file listed (AssetJobs checks again after reading it)
        try:
            return open(target, "rb")
        except OSError as exc:
            raise AssetError(f"cannot read {path}: {exc.strerror or exc}") from exc

    return AssetSource(rel, seen.size, reader, executable=bool(mode & stat.S_IXUSR), recheck=recheck)


def directory_parts(model: ImportedModel) -> DirectoryParts:
    """Shards (with header metadata), index metadata and, for a directory, its assets."""
    if model.root is None:
        return DirectoryParts(shards=tuple(model.shards))
    # A vendor's model.sig is verified on import and recorded as the manifest's provenance
    # (appliance.provenance); it is not an asset: a restored directory's bytes differ from the
    # signed ones (re-sharded, appliance header keys), so a restore writes its own model.sig.
    skip = frozenset({INDEX_NAME, MODEL_SIG, *(f.name for f in model.files)})
    return DirectoryParts(scan_assets(model.root, skip), tuple(model.shards), dict(model.index_metadata))


def signed_parts(parts: DirectoryParts, model: ImportedModel, signed: dict[str, str]) -> DirectoryParts:
    """``parts`` with a verified ``model.sig``'s per-file digests: each asset is compared as read, and
    each shard is read again whole before the bundle and compared (design §6.2.1). A shard that
    ``model.sig`` does not list (the library covers every file, so never expected) is refused."""
    unlisted = sorted(set(model.whole_file_reads) - set(signed))
    if unlisted:
        raise VendorSignatureError(f"model.sig does not list the shard {unlisted[0]!r}: it is not vendor-signed")
    shards = tuple(SignedShard(f, signed[f], read) for f, read in sorted(model.whole_file_reads.items()))
    return replace(parts, signed_sha256=signed, signed_shards=shards)


def check_layout(store: Store, model: ImportedModel, source: str | Path, *, new_layout: bool = False) -> None:
    """The layout rule (docs/design.md §4.5): a model file or directory committed into a store
    has the tensor names, dtypes and shapes of its newest valid checkpoint, unless ``new_layout``.

    Raises ``ModelLayoutError`` (74) naming what differs, before anything is written. A store
    with no valid checkpoint, or whose newest one holds no tensors, takes any; a source with no
    tensors is its own explicit case (``--allow-empty``).
    """
    if new_layout or not model.sources:  # an empty commit is explicit already (--allow-empty)
        return
    try:
        opened = store.select().opened
    except NoValidCheckpointError:
        return
    parent = opened.verified.manifest
    if not parent.tensors:
        return
    change = describe_layout_change(layout_of(parent.tensors), {s.name: (s.dtype, s.shape) for s in model.sources})
    if change is not None:
        raise ModelLayoutError(
            f"{source} is not the store's model: its tensors differ from generation {opened.generation} "
            f"(model {store.config.model!r}): {change}"
        )


# --- restore -------------------------------------------------------------------------------


def name_filter(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate: the name matches any glob in ``patterns`` (``fnmatch``, case-sensitive)."""
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def appliance_header(generation: int, manifest_digest: str, metadata: Mapping[str, Any]) -> dict[str, str]:
    return {
        "appliance.generation": str(generation),
        "appliance.manifest": manifest_digest,
        "appliance.metadata": json.dumps(dict(metadata), sort_keys=True),
    }


def merged_header(
    shards: Sequence[ShardEntry], remedy: str = "restore as a directory (--out DIR/) to keep every shard's header"
) -> dict[str, str]:
    """One header for tensors of several shards: their keys, which must agree (``UsageError`` with ``remedy``)."""
    if not shards:
        return dict(DEFAULT_HEADER)
    merged: dict[str, str] = {}
    for shard in shards:
        for key, value in shard.header_metadata.items():
            if merged.setdefault(key, value) != value:
                raise UsageError(
                    f"shards disagree on header metadata {key!r}; one file cannot keep both values",
                    remedy=remedy,
                )
    return merged


def write_file(path: Path, tensors: Mapping[str, torch.Tensor], manifest: Manifest, ours: Mapping[str, str]) -> Path:
    shards = [s for s in manifest.shards if set(s.tensors) & set(tensors)]
    return export_safetensors(tensors, path, merged_header(shards) | dict(ours))


def plan_shards(
    manifest: Manifest, tensors: Mapping[str, torch.Tensor], max_shard_bytes: int | None
) -> list[tuple[str, list[str], dict[str, str]]]:
    """(file name, tensor names, header) per shard: the recorded layout, or new shards of a size."""
    if max_shard_bytes is None and manifest.shards:
        kept = [s for s in manifest.shards if any(n in tensors for n in s.tensors)]
        names = renumber_shards([s.file for s in kept])  # a subset's shards: 1..m of m, not -of-<all>
        return [
            (file, [n for n in s.tensors if n in tensors], dict(s.header_metadata))
            for file, s in zip(names, kept, strict=True)
        ]
    header = merged_header(
        list(manifest.shards),
        remedy="restore without --max-shard-size: the recorded shards "
        "keep their own headers (re-sharding needs shards whose headers agree)",
    )
    groups: list[list[str]] = [[]]
    size = 0
    for name in (t.name for t in manifest.tensors if t.name in tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if groups[-1] and max_shard_bytes is not None and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        return [("model.safetensors", groups[0], header)]
    n = len(groups)
    return [(f"model-{i:05d}-of-{n:05d}.safetensors", g, dict(header)) for i, g in enumerate(groups, start=1)]


def write_directory(
    out: Path,
    tensors: Mapping[str, torch.Tensor],
    assets: Mapping[str, bytes],
    manifest: Manifest,
    *,
    ours: Mapping[str, str],
    max_shard_bytes: int | None = None,
) -> dict[str, Any]:
    """Write a complete model directory at ``out`` (new or empty), atomically by renaming a temp dir."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty directory", remedy="choose a new or empty directory")
    plan = plan_shards(manifest, tensors, max_shard_bytes)
    check_exportable(tensors, {k: v for _, _, h in plan for k, v in h.items()} | dict(ours))
    temp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}", remedy="choose a writable output path") from exc
    try:
        for file, names, header in plan:
            export_safetensors({n: tensors[n] for n in names}, temp / file, header | dict(ours))
        indexed = len(plan) > 1 or any(s.file != plan[0][0] for s in manifest.shards) or bool(manifest.index_metadata)
        if indexed:
            _write_index(temp, plan, tensors, manifest)
        for path, data in assets.items():
            _write_asset(temp, manifest, path, data)
        _fsync(temp)
        if out.exists():
            out.rmdir()
        temp.rename(out)
        _fsync(out.parent)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}", remedy="choose a writable output path") from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return {"shards": [p[0] for p in plan], "index": indexed, "assets": sorted(assets)}


def _write_index(
    temp: Path, plan: list[tuple[str, list[str], dict[str, str]]], tensors: Mapping[str, torch.Tensor], m: Manifest
) -> None:
    metadata = dict(m.index_metadata) | {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}
    if "total_parameters" in metadata and set(tensors) != {t.name for t in m.tensors}:
        # transformers records model.num_parameters(); for a subset the only true count is the written values'
        metadata["total_parameters"] = sum(
            t.numel() * DTYPES[dtype_name(t.dtype)].values_per_element for t in tensors.values()
        )
    index = {
        "metadata": metadata,
        "weight_map": {n: file for file, names, _ in plan for n in names},
    }
    (temp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_asset(temp: Path, manifest: Manifest, path: str, data: bytes) -> None:
    check_label(path, "asset path")  # already checked in the signed manifest; never trust one layer
    target = temp.joinpath(*path.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if manifest.asset(path).executable:
        target.chmod(0o755)


def _fsync(directory: Path) -> None:
    for sub in sorted({p.parent for p in directory.rglob("*")} | {directory}, key=lambda p: -len(p.parts)):
        fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def parse_size(text: str) -> int:
    """``200KB``, ``5GB``, ``1GiB`` or a byte count (transformers' ``max_shard_size`` spelling)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    value = text.strip().upper()
    number = value.rstrip("KMGIB")
    try:
        size = int(float(number) * units[value[len(number) :]])
    except (KeyError, ValueError):
        raise UsageError(f"--max-shard-size {text!r} is not a size", remedy="pass e.g. 200KB, 5GB or 1GiB") from None
    if size <= 0:
        raise UsageError("--max-shard-size must be positive")
    return size
