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

``load(into=...)`` fills tensors of any strides, memory format (``channels_last``), device or
lazy conj/neg bit, and destinations that share memory (tied weights) only when the checkpoint
agrees on every shared byte (``appliance.sources.destinations``). A failed ``load(into=...)``
is *accounted*: the raised error's ``written`` (and its message) names exactly the destination
tensors that were written, fully or partly; every other one is untouched. With
``atomic=True`` the checkpoint is restored into fresh memory first and copied over only once it
verified, so a failure leaves every destination as it was (peak memory: twice the model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from appliance.codec.gpu import BatchDecoder
from appliance.errors import (
    ApplianceError,
    HardwareError,
    IntegrityError,
    NoValidCheckpointError,
    SourceChangedError,
    StorageError,
    TensorMismatchError,
    UsageError,
)
from appliance.events import EventLog
from appliance.format.directory import ShardEntry
from appliance.format.manifest import Manifest
from appliance.format.provenance import Provenance
from appliance.signing import SigningKey
from appliance.sources.destinations import plan_destinations, restore_into_tensors
from appliance.sources.safetensors_io import ImportedModel, check_header_keys
from appliance.sources.tensors import (
    allocate,
    check_destination,
    sources_from_dict,
    tensor_from_region,
    torch_dtype,
)
from appliance.store.assets import DirectoryParts, read_assets
from appliance.store.commit import CommitResult, check_metadata
from appliance.store.discovery import Failure, OpenCheckpoint
from appliance.store.partial import restore_selected
from appliance.store.restore import RestoreStats, Sink
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
    allow_empty: bool = False,
) -> CommitResult:
    """Commit ``tensors`` (name -> tensor) signed by ``key``; ``metadata`` is any JSON object.

    ``header_metadata`` (str -> str) is the safetensors ``__metadata__`` a restore writes back
    (e.g. ``{"format": "pt"}``); keys in the ``appliance.`` namespace and a tensor named
    ``__metadata__`` raise ``ReservedNameError`` before anything is written. Tensors may have any
    strides, device or lazy conj/neg bit; meta, sparse, nested and quantized tensors are refused
    with ``UsageError`` naming the tensor; an empty mapping is refused unless ``allow_empty``.
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
        allow_empty=allow_empty,
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
    new_layout: bool = False,
) -> CommitResult:
    """Commit a ``.safetensors`` file or a whole model directory, as ``appliance commit`` does.

    Tensors, each shard's header metadata, the index's metadata and (for a directory) every other
    file as an asset (docs/design.md §4.5); a vendor ``model.sig`` is verified against the
    store's vendor trust and recorded as provenance, as on the CLI (a store that requires one
    refuses an unsigned source). Source defects raise ``SourceFormatError``, ``AssetError``,
    ``ReservedNameError`` or the provenance errors before anything is written; a source whose
    tensor names, dtypes or shapes differ from the store's newest checkpoint raises
    ``ModelLayoutError`` unless ``new_layout`` (another architecture, a subset, a resized tensor).
    """
    from appliance.sources.model_dir import check_layout

    keys = [key] if isinstance(key, SigningKey) else list(key)
    check_metadata(metadata or {})  # input errors (10) before the source's and the store's (e.g. the layout, 74)
    provenance, model, parts = open_for_commit(store, source)
    if model.dropped_header_keys:
        log.warning("%s: dropped header keys in appliance's namespace: %s", source, model.dropped_header_keys)
    try:
        check_layout(store, model, source, new_layout=new_layout)
        result, _ = store.commit(
            model.sources,
            keys,
            metadata,
            policy=policy,
            full=full,
            progress=progress,
            directory=parts,
            provenance=provenance,
            reread=True,  # a source file written through a shared mapping leaves no identity trace
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
    atomic: bool = False,
) -> LoadedCheckpoint:
    """The newest valid checkpoint (or ``generation``), verified, as CPU tensors.

    ``zero_copy=True`` (fresh tensors only) maps the uncompressed frames of sealed files into
    the tensors instead of copying them (docs/performance.md): the fastest verified restore,
    with tensors whose pages stay shared with the page cache until written. ``names`` (names, or
    a predicate on a name) restores only those tensors into fresh tensors; a name the checkpoint
    lacks, or a predicate nothing matches, is a ``TensorMismatchError``.
    ``assets=True`` also returns the model directory's files, each checked against its signed
    SHA-256. A checkpoint failing either is abandoned for the next candidate like any other.
    ``into`` and ``atomic``: see the module docs.
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
        if into is None:
            fresh = {t.name: allocate(t) for t in opened.verified.manifest.tensors}
            stats = restore_into_tensors(store.storage, opened, fresh, deep=deep, workers=workers, progress=progress)
            return fresh, stats
        if atomic:
            plan_destinations(opened.verified.manifest.tensors, into)  # refuse a mismatch before any work
            fresh = {t.name: allocate(t) for t in opened.verified.manifest.tensors}
            stats = restore_into_tensors(store.storage, opened, fresh, deep=deep, workers=workers, progress=progress)
            _copy_verified(opened, fresh, into, written)
            return dict(into), stats
        stats = restore_into_tensors(
            store.storage, opened, into, deep=deep, workers=workers, progress=progress, written=written
        )
        return dict(into), stats

    written: set[str] = set()
    try:
        return _first_restorable(store, generation, floor, attempt, assets)
    except ApplianceError as exc:
        if not written:
            raise
        raise _accounted(exc, written) from exc


def _copy_verified(
    opened: OpenCheckpoint, fresh: Mapping[str, torch.Tensor], into: Mapping[str, torch.Tensor], written: set[str]
) -> None:
    """``atomic``: copy a verified restore into ``into`` (a mismatch or aliasing conflict raises first)."""
    entries = opened.verified.manifest.tensors
    plan = plan_destinations(entries, into)
    for overlap in plan.overlaps:
        for name, staged in overlap.staged.items():
            staged.copy_(fresh[name])
    checked = plan.check()
    for entry in entries:
        if entry.name in plan.skip or entry.name in plan.staged_names:
            continue
        written.update(plan.caller_written({entry.name}))
        view = plan.views[entry.name]
        data = fresh[entry.name].reshape(-1).view(torch.uint8).numpy()
        if isinstance(view, Sink):
            view.write(0, data)
        else:
            view[:] = data
    written.update(plan.staged_names)
    plan.write(checked)


def _accounted(exc: ApplianceError, written: set[str]) -> ApplianceError:
    """``exc`` again, saying which destination tensors the failed ``load(into=...)`` wrote."""
    names = tuple(sorted(written))
    shown = ", ".join(repr(n) for n in names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    problem = (
        f"{exc.problem}; destination tensors written before the failure (their contents are undefined, "
        f"every other destination is untouched): {shown}"
    )
    out = type(exc)(problem, remedy=exc.remedy)
    out.written = names
    return out


def _first_restorable(
    store: Store, generation: int | None, floor: int, attempt: Attempt, assets: bool = False
) -> LoadedCheckpoint:
    """Newest candidate first; a candidate that fails while restoring is abandoned for the next."""
    failures: list[Failure] = []
    tried: set[tuple[str, int]] = set()
    while True:
        try:
            selection = store.select(generation, floor=floor, exclude=frozenset(tried))
        except NoValidCheckpointError as exc:
            if not failures:
                raise
            # The candidates that failed while restoring are excluded from this selection, so its
            # message would not name them ("both slots are empty"): name every failure seen.
            reasons = "; ".join(f.describe() for f in _dedupe(failures))
            raise NoValidCheckpointError(f"no committed checkpoint verifies ({reasons})") from exc
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
    decoder: BatchDecoder | None = None,
    events: EventLog | None = None,
) -> LoadedCheckpoint:
    """The newest valid checkpoint, verified, as tensors on ``device`` (a Jetson's GPU).

    With nvCOMP and a CUDA device, stored frames are verified on the CPU cores and decoded on the
    device (``appliance.gpu.restore``). Otherwise the reason is logged, the checkpoint is
    restored on the CPU (``load``) and copied to ``device``. ``decoder`` (tests, other devices)
    forces the batched path with that decoder.

    Failures (docs/design.md §6.3.2): a frame failing its SHA-256 in the stager is a
    ``FrameError`` — that checkpoint is abandoned for the next candidate like on the CPU path.
    The decoder or device failing mid-restore is a ``HardwareError``: it is logged and emitted
    (``restore.gpu_fallback`` on ``events``) and the *same* checkpoint is restored with the CPU
    decoder and copied to ``device``; if that copy fails too, ``HardwareError`` (exit 70) is raised.
    """
    from appliance.codec import gpu as gpu_codec

    dev = torch.device(device)
    if decoder is None:
        availability = gpu_codec.available()
        if dev.type != "cuda" or not availability.ok:
            log.warning("decoding on the CPU, then copying to %s: %s", dev, availability.reason)
            loaded = load(store, generation=generation, floor=floor, workers=workers)
            loaded.tensors = _to_device(loaded.tensors, dev)
            return loaded
        decoder = gpu_codec.NvcompBatchDecoder(torch.cuda.current_stream(dev).cuda_stream, dev.index or 0)
    from appliance.gpu.restore import restore_to_device

    batch_decoder = decoder

    def attempt(opened: OpenCheckpoint) -> tuple[dict[str, torch.Tensor], RestoreStats]:
        manifest = opened.verified.manifest
        try:
            flat, gstats = restore_to_device(store.storage, opened, dev, batch_decoder, workers=workers)
        except HardwareError as exc:
            log.warning("GPU restore of %s/%d failed, decoding on the CPU: %s", opened.slot, opened.generation, exc)
            if events is not None:
                events.emit(
                    "restore.gpu_fallback",
                    slot=opened.slot,
                    generation=opened.generation,
                    error=type(exc).__name__,
                    problem=exc.problem,
                )
            fresh = {t.name: allocate(t) for t in manifest.tensors}
            stats = restore_into_tensors(store.storage, opened, fresh, workers=workers)
            stats.mode = "cpu (gpu failed)"
            return _to_device(fresh, dev), stats
        tensors = {t.name: flat[t.name].view(torch_dtype(t.dtype)).reshape(t.shape) for t in manifest.tensors}
        stats = RestoreStats(opened.generation, opened.slot, raw_bytes=gstats.raw_bytes, seconds=gstats.seconds)
        stats.mode, stats.stored_bytes_read, stats.frames = "gpu", gstats.stored_bytes, gstats.frames
        return tensors, stats

    return _first_restorable(store, generation, floor, attempt)


def _to_device(tensors: dict[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    try:
        return {name: t.to(dev) for name, t in tensors.items()}
    except (RuntimeError, ValueError) as exc:  # the device itself failed: nothing restores onto it
        raise HardwareError(f"copying the verified restore to {dev} failed: {exc}") from exc


def _restore_zero_copy(
    store: Store, opened: OpenCheckpoint, *, deep: bool, workers: int | None, progress: Progress | None
) -> tuple[dict[str, torch.Tensor], RestoreStats]:
    regions, stats = restore_mapped(store.storage, opened, deep=deep, workers=workers, progress=progress)
    manifest = opened.verified.manifest
    return {t.name: tensor_from_region(t, regions[t.name]) for t in manifest.tensors}, stats


_NAMES_REMEDY = (
    "pass `names` that select tensors of this checkpoint: names or a predicate over them "
    "(the checkpoint's names: `appliance log ROOT --tensors`, or Store.log(tensors=True))"
)


def _subset(opened: OpenCheckpoint, names: Collection[str] | Callable[[str], bool]) -> dict[str, torch.Tensor]:
    manifest = opened.verified.manifest
    if callable(names):
        chosen = {t.name for t in manifest.tensors if names(t.name)}
        if not chosen:
            raise TensorMismatchError(
                f"no tensor of generation {opened.generation} matches the selection (`names`)", remedy=_NAMES_REMEDY
            )
    else:
        chosen = set(names)
        unknown = sorted(chosen - {t.name for t in manifest.tensors})
        if unknown:
            raise TensorMismatchError(f"the checkpoint has no tensor(s) {unknown[:5]} (`names`)", remedy=_NAMES_REMEDY)
    return {t.name: allocate(t) for t in manifest.tensors if t.name in chosen}


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


def open_for_commit(store: Store, source: str | Path) -> tuple[Provenance | None, ImportedModel, DirectoryParts]:
    """``source``'s vendor provenance (verified), the opened model and its directory parts.

    A signed directory whose files change between the verification and the open raises
    ``SourceChangedError`` (20): the commit's own re-checks then hold every file to what was
    opened, so what is committed is what the vendor signed (new-user trial, 2026-12-05). The
    caller closes the model.
    """
    from appliance.format.digest import Digest
    from appliance.format.provenance import MODEL_SIG
    from appliance.provenance import check_source, load_vendors, signed_file_digests, vendors_path
    from appliance.sources.model_dir import directory_parts, signed_parts
    from appliance.sources.safetensors_io import open_model
    from appliance.sources.stable import tree_identities

    path, root = Path(source), Path(str(getattr(store.storage, "root", ".")))
    before = tree_identities(path) if path.is_dir() else {}
    provenance = check_source(path, load_vendors(vendors_path(root, store.config.vendors)))
    model = open_model(source)
    try:
        parts = directory_parts(model)
        if provenance is not None and path.is_dir():  # every asset as read must be the file the vendor signed
            signature = (path / MODEL_SIG).read_bytes()
            if Digest.of(signature) != provenance.signature_sha256:
                raise SourceChangedError(f"{source}/{MODEL_SIG} changed after it was verified")
            parts = signed_parts(parts, model, signed_file_digests(signature))
        if provenance is not None and path.is_dir() and tree_identities(path) != before:
            raise SourceChangedError(
                f"{source} changed while its vendor signature was verified: the files read would not be the ones signed"
            )
    except BaseException:
        model.close()
        raise
    return provenance, model, parts
