"""The Python API on torch tensors: commit a state dict, load it back verified.

Owns: ``save`` / ``load`` / ``LoadedCheckpoint`` and restore fallback across candidates.
Does not own the store mechanics (``appliance.store``) or file formats (``appliance.sources``).

    store = Store.open("/var/lib/appliance")
    result, _ = save(store, model.state_dict(), key, metadata={"step": 1200})
    loaded = load(store)                        # fresh tensors, newest valid checkpoint
    load(store, into=model.state_dict())        # in place, into preallocated tensors
    load(store, zero_copy=True)                 # fast checkpoints: tensors share the page cache
    load(store, assets=True, names=["lm_head.weight"])  # a subset, plus the directory's files
    save_directory(store, "tiny-llama/", key)   # a whole model directory (tensors, headers, assets)
    restore_directory(store, "restored/")       # ... and back, loadable by from_pretrained

``load`` never returns a partially restored or unverified state: if a frame fails while
restoring, that checkpoint is abandoned and the next candidate (other slot, older
generation) is restored from scratch; if none is left, ``NoValidCheckpointError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from appliance.codec.transform import U8
from appliance.errors import (
    ApplianceError,
    IntegrityError,
    NoValidCheckpointError,
    StorageError,
    TensorMismatchError,
    UsageError,
)
from appliance.format.directory import ShardEntry
from appliance.format.manifest import Manifest
from appliance.signing import SigningKey
from appliance.sources.safetensors_io import check_header_keys
from appliance.sources.tensors import (
    allocate,
    check_destination,
    sources_from_dict,
    tensor_from_region,
    torch_dtype,
)
from appliance.store.assets import DirectoryParts, read_assets
from appliance.store.commit import CommitResult
from appliance.store.discovery import Failure, OpenCheckpoint
from appliance.store.partial import restore_selected
from appliance.store.restore import RestoreStats
from appliance.store.store import Store
from appliance.store.zerocopy import restore_mapped

Progress = Callable[[int], None]
Attempt = Callable[[OpenCheckpoint], "tuple[dict[str, torch.Tensor], RestoreStats]"]
log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    slot: str
    generation: int
    manifest_digest: str
    stats: RestoreStats
    failures: list[Failure] = field(default_factory=list)
    manifest: Manifest | None = None  # the verified manifest (shards, header metadata, asset records)
    assets: dict[str, bytes] = field(default_factory=dict)  # path -> bytes, verified; only if asked for

    @property
    def fell_back(self) -> bool:
        return bool(self.failures)


def save(
    store: Store,
    tensors: Mapping[str, torch.Tensor],
    key: SigningKey | Sequence[SigningKey],
    metadata: Mapping[str, Any] | None = None,
    *,
    policy: str | None = None,
    full: bool = False,
    floor: int = 0,
    progress: Progress | None = None,
    header_metadata: Mapping[str, str] | None = None,
) -> CommitResult:
    """Commit ``tensors`` (name -> tensor) signed by ``key``; ``metadata`` is any JSON object.

    ``header_metadata`` (str -> str) is the safetensors ``__metadata__`` a restore writes back
    (e.g. ``{"format": "pt"}``); keys in the ``appliance.`` namespace and a tensor named
    ``__metadata__`` raise ``ReservedNameError`` before anything is written.
    """
    keys = [key] if isinstance(key, SigningKey) else list(key)
    if not keys or not all(isinstance(k, SigningKey) for k in keys):
        raise UsageError(
            "argument `key` must be a SigningKey or a non-empty list of them",
            remedy="pass key=SigningKey.load(PATH) (a key written by `appliance keygen`)",
        )
    sources = sources_from_dict(tensors)
    directory = None
    if header_metadata is not None:
        check_header_keys(header_metadata)
        directory = DirectoryParts(shards=(_one_shard(header_metadata, [s.name for s in sources]),))
    result, _ = store.commit(
        sources,
        keys,
        metadata,
        policy=policy,
        full=full,
        floor=floor,
        progress=progress,
        directory=directory,
    )
    return result


def save_directory(
    store: Store,
    source: str | Path,
    key: SigningKey | Sequence[SigningKey],
    metadata: Mapping[str, Any] | None = None,
    *,
    policy: str | None = None,
    full: bool = False,
    progress: Progress | None = None,
) -> CommitResult:
    """Commit a ``.safetensors`` file or a whole model directory, as ``appliance commit`` does.

    Tensors, each shard's header metadata, the index's metadata and (for a directory) every other
    file as an asset (docs/design.md §4.5); a vendor ``model.sig`` is verified against the
    store's vendor trust and recorded as provenance, as on the CLI (a store that requires one
    refuses an unsigned source). Source defects raise ``SourceFormatError``, ``AssetError``,
    ``ReservedNameError`` or the provenance errors before anything is written.
    """
    from appliance.provenance import check_source, load_vendors, vendors_path
    from appliance.sources.model_dir import directory_parts
    from appliance.sources.safetensors_io import open_model

    keys = [key] if isinstance(key, SigningKey) else list(key)
    root = Path(str(getattr(store.storage, "root", ".")))
    provenance = check_source(Path(source), load_vendors(vendors_path(root, store.config.vendors)))
    model = open_model(source)
    try:
        parts = directory_parts(model)
        result, _ = store.commit(
            model.sources,
            keys,
            metadata,
            policy=policy,
            full=full,
            progress=progress,
            directory=parts,
            provenance=provenance,
        )
    finally:
        model.close()
    return result


def restore_directory(
    store: Store,
    out: str | Path,
    *,
    generation: int | None = None,
    names: Collection[str] | Callable[[str], bool] | None = None,
    max_shard_size: int | None = None,
    deep: bool = False,
) -> LoadedCheckpoint:
    """Restore the newest valid checkpoint (or ``generation``) as a complete model directory ``out``.

    ``out`` must be new or empty; it then holds the shards (as recorded, or new ones of at most
    ``max_shard_size`` bytes), ``model.safetensors.index.json`` and every asset, so that
    ``AutoModel*.from_pretrained(out)`` loads it. Returns what was loaded (tensors, assets).
    """
    from appliance.sources.model_dir import appliance_header, write_directory

    loaded = load(store, generation=generation, deep=deep, names=names, assets=True)
    assert loaded.manifest is not None
    ours = appliance_header(loaded.generation, loaded.manifest_digest, loaded.metadata)
    write_directory(
        Path(out), loaded.tensors, loaded.assets, loaded.manifest, ours=ours, max_shard_bytes=max_shard_size
    )
    return loaded


def _one_shard(header: Mapping[str, str], names: list[str]) -> ShardEntry:
    if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in header.items()):
        raise UsageError("`header_metadata` must map non-empty strings to strings")
    return ShardEntry("model.safetensors", tuple(names), dict(header))


def load(
    store: Store,
    into: Mapping[str, torch.Tensor] | None = None,
    *,
    generation: int | None = None,
    floor: int = 0,
    deep: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    zero_copy: bool = False,
    names: Collection[str] | Callable[[str], bool] | None = None,
    assets: bool = False,
) -> LoadedCheckpoint:
    """The newest valid checkpoint (or ``generation``), verified, as CPU tensors.

    ``zero_copy=True`` (fresh tensors only) maps the uncompressed frames of sealed files into
    the tensors instead of copying them (docs/performance.md): the fastest verified restore,
    with tensors whose pages stay shared with the page cache until written. ``names`` (names, or
    a predicate on a name) restores only those tensors into fresh tensors; a name the checkpoint
    lacks, or a predicate nothing matches, is a ``TensorMismatchError``.
    ``assets=True`` also returns the model directory's files, each checked against its signed
    SHA-256. A checkpoint failing either is abandoned for the next candidate like any other.
    """
    if zero_copy and into is not None:
        raise UsageError(
            "zero_copy restores into new tensors; it cannot fill `into`",
            remedy="pass either argument `into` or `zero_copy=True`, not both",
        )
    if names is not None and (into is not None or zero_copy):
        raise UsageError(
            "argument `names` restores a subset into new tensors; it cannot be combined with `into` or `zero_copy`",
            remedy="pass argument `names` alone, or `into`/`zero_copy` without it",
        )

    def attempt(opened: OpenCheckpoint) -> tuple[dict[str, torch.Tensor], RestoreStats]:
        if zero_copy:
            return _restore_zero_copy(store, opened, deep=deep, workers=workers, progress=progress)
        if names is not None:
            tensors = _subset(opened, names)
            views = {n: check_destination(opened.verified.manifest.tensor(n), t) for n, t in tensors.items()}
            return tensors, restore_selected(store.storage, opened, views, deep=deep, workers=workers)
        tensors = _destinations(opened, into)
        views = _views(opened, tensors)
        return tensors, store.restore_into(opened, views, deep=deep, workers=workers, progress=progress)

    return _first_restorable(store, generation, floor, attempt, assets)


def _first_restorable(
    store: Store, generation: int | None, floor: int, attempt: Attempt, assets: bool = False
) -> LoadedCheckpoint:
    """Newest candidate first; a candidate that fails while restoring is abandoned for the next."""
    failures: list[Failure] = []
    tried: set[tuple[str, int]] = set()
    while True:
        selection = store.select(generation, floor=floor, exclude=frozenset(tried))
        failures.extend(f for f in selection.failures if (f.slot, f.generation) not in tried)
        opened = selection.opened
        try:
            tensors, stats = attempt(opened)
            files = read_assets(store.storage, opened) if assets else {}
        except (IntegrityError, StorageError) as exc:
            failures.append(Failure(opened.slot, opened.generation, exc))
            tried.add((opened.slot, opened.generation))
            if generation is not None:
                raise
            continue
        return LoadedCheckpoint(
            tensors=tensors,
            metadata=dict(opened.verified.manifest.metadata),
            slot=opened.slot,
            generation=opened.generation,
            manifest_digest=opened.record.manifest_digest.hex,
            stats=stats,
            failures=_dedupe(failures),
            manifest=opened.verified.manifest,
            assets=files,
        )


def load_to_device(
    store: Store,
    device: str | torch.device = "cuda",
    *,
    generation: int | None = None,
    floor: int = 0,
    workers: int | None = None,
) -> LoadedCheckpoint:
    """The newest valid checkpoint, verified, as tensors on ``device`` (a Jetson's GPU).

    With nvCOMP and a CUDA device, stored frames are verified on the CPU cores and decoded on the
    device (``appliance.gpu.restore``). Otherwise the reason is logged, the checkpoint is
    restored on the CPU (``load``) and copied to ``device``.
    """
    from appliance.codec import gpu as gpu_codec

    dev = torch.device(device)
    availability = gpu_codec.available()
    if dev.type != "cuda" or not availability.ok:
        log.warning("decoding on the CPU, then copying to %s: %s", dev, availability.reason)
        loaded = load(store, generation=generation, floor=floor, workers=workers)
        loaded.tensors = {name: t.to(dev) for name, t in loaded.tensors.items()}
        return loaded
    from appliance.gpu.restore import restore_to_device

    decoder = gpu_codec.NvcompBatchDecoder(torch.cuda.current_stream(dev).cuda_stream, dev.index or 0)

    def attempt(opened: OpenCheckpoint) -> tuple[dict[str, torch.Tensor], RestoreStats]:
        flat, gstats = restore_to_device(store.storage, opened, dev, decoder, workers=workers)
        manifest = opened.verified.manifest
        tensors = {t.name: flat[t.name].view(torch_dtype(t.dtype)).reshape(t.shape) for t in manifest.tensors}
        stats = RestoreStats(opened.generation, opened.slot, raw_bytes=gstats.raw_bytes, seconds=gstats.seconds)
        stats.mode, stats.stored_bytes_read, stats.frames = "gpu", gstats.stored_bytes, gstats.frames
        return tensors, stats

    return _first_restorable(store, generation, floor, attempt)


def _restore_zero_copy(
    store: Store, opened: OpenCheckpoint, *, deep: bool, workers: int | None, progress: Progress | None
) -> tuple[dict[str, torch.Tensor], RestoreStats]:
    regions, stats = restore_mapped(store.storage, opened, deep=deep, workers=workers, progress=progress)
    manifest = opened.verified.manifest
    return {t.name: tensor_from_region(t, regions[t.name]) for t in manifest.tensors}, stats


def _subset(opened: OpenCheckpoint, names: Collection[str] | Callable[[str], bool]) -> dict[str, torch.Tensor]:
    manifest = opened.verified.manifest
    if callable(names):
        chosen = {t.name for t in manifest.tensors if names(t.name)}
        if not chosen:
            raise TensorMismatchError(f"no tensor of generation {opened.generation} matches the selection")
    else:
        chosen = set(names)
        unknown = sorted(chosen - {t.name for t in manifest.tensors})
        if unknown:
            raise TensorMismatchError(f"the checkpoint has no tensor(s) {unknown[:5]}")
    return {t.name: allocate(t) for t in manifest.tensors if t.name in chosen}


def _destinations(opened: OpenCheckpoint, into: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    manifest = opened.verified.manifest
    if into is None:
        return {t.name: allocate(t) for t in manifest.tensors}
    return dict(into)


def _views(opened: OpenCheckpoint, tensors: Mapping[str, torch.Tensor]) -> dict[str, U8]:
    manifest = opened.verified.manifest
    names = {t.name for t in manifest.tensors}
    if names != set(tensors):
        missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise TensorMismatchError(
            f"destination tensors differ from the checkpoint: missing {missing[:5]}, extra {extra[:5]}"
        )
    return {t.name: check_destination(t, tensors[t.name]) for t in manifest.tensors}


def _dedupe(failures: list[Failure]) -> list[Failure]:
    seen: set[tuple[str, int]] = set()
    out = []
    for f in failures:
        if (f.slot, f.generation) not in seen:
            seen.add((f.slot, f.generation))
            out.append(f)
    return out


__all__ = [
    "ApplianceError",
    "LoadedCheckpoint",
    "NoValidCheckpointError",
    "load",
    "load_to_device",
    "restore_directory",
    "save",
    "save_directory",
]
