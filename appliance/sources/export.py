"""State export files: a safetensors file whose header carries a content-digested ``ExportInfo``.

Owns: writing an export atomically (temp name, fsync, rename, directory fsync) and opening one
with every check a persist needs before it signs anything: the safetensors structure (a
truncated file fails here), the ``appliance.export`` header, and the content digest over all
tensor bytes. Does not own the outbox (``appliance.persist``) or capturing state (the service).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.codec.transform import U8
from appliance.errors import ApplianceError, ExportFileError
from appliance.format.canary import Canary
from appliance.format.dtypes import DTYPES
from appliance.format.export import (
    CONTENT_CHUNK,
    HEADER_KEY,
    ChunkedContentHasher,
    ContentHasher,
    ExportInfo,
    chunk_spans,
    export_name,
)
from appliance.sources.safetensors_io import ImportedModel, export_safetensors, open_model
from appliance.storage import LocalStorage
from appliance.store.encode import TensorSource
from appliance.store.lastcommit import LastCommit

if TYPE_CHECKING:  # torch only in the service's writing half: the persistence watchdog never imports it
    import torch


@dataclass
class OpenedExport:
    path: Path
    info: ExportInfo
    model: ImportedModel

    def close(self) -> None:
        self.model.close()


Pieces = dict[tuple[int, int], str]  # (offset, size) of a piece of one tensor -> its SHA-256 (hex)


def tensors_digest(tensors: Mapping[str, torch.Tensor], *, chunk: int | None = None, workers: int = 1) -> str:
    """The content digest of ``tensors``: serial (``chunk`` None) or chunked, its pieces on ``workers`` threads."""
    from appliance.sources.tensors import byte_view, dtype_name  # torch: the service's half only

    if chunk is None:
        hasher = ContentHasher()
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous()
            hasher.add(name, dtype_name(t.dtype), tuple(t.shape), byte_view(t).data)
        return hasher.hexdigest()
    chunked = ChunkedContentHasher(chunk)
    with _pool(workers) as pool:
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous()
            data = byte_view(t)
            pieces = _pieces(pool, data, t.element_size(), chunk).values()
            chunked.add(name, dtype_name(t.dtype), tuple(t.shape), data.size, (bytes.fromhex(h) for h in pieces))
    return chunked.hexdigest()


def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="content-digest")


def _pieces(pool: ThreadPoolExecutor, data: U8, itemsize: int, chunk: int) -> Pieces:
    """SHA-256 of each piece of one tensor's bytes (``hashlib`` releases the GIL: pieces hash in parallel)."""
    spans = chunk_spans(data.size, itemsize, chunk)
    digests = pool.map(lambda span: hashlib.sha256(data[span[0] : span[0] + span[1]].data).hexdigest(), spans)
    return dict(zip(spans, digests, strict=True))


def write_export(
    tensors: Mapping[str, torch.Tensor],
    outbox: str | Path,
    *,
    model: str,
    step: int,
    pause_s: float,
    canary: Canary | None = None,
    source: dict[str, Any] | None = None,
    sequence: int | None = None,
    journal: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    content_chunk: int | None = CONTENT_CHUNK,
) -> tuple[Path, ExportInfo]:
    """Write ``tensors`` (a private snapshot: nobody may modify them meanwhile) into ``outbox``.

    ``content_chunk``: the chunked content digest's piece size (``None``: the serial digest of
    exports before issue 16, still read). Hashed on one thread: the service keeps serving.
    """
    outbox = Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    info = ExportInfo(
        model=model,
        step=step,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        content_sha256=tensors_digest(tensors, chunk=content_chunk),
        tensors=len(tensors),
        raw_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        pause_s=pause_s,
        canary=canary,
        source=source,
        journal=journal,
        training=training,
        content_chunk=content_chunk,
    )
    path = outbox / export_name(sequence if sequence is not None else time.time_ns())
    export_safetensors(tensors, path, {HEADER_KEY: info.header_value()})
    return path, info


def open_export(path: str | Path, keep: LastCommit | None = None, *, workers: int | None = None) -> OpenedExport:
    """Open and fully check an export; ``ExportFileError`` says why it must not be committed.

    ``keep`` (the persistence watchdog's ``LastCommit``): when the state fits its limit, every tensor
    is read once, into buffers ``keep`` recycles, and the commit uses those bytes — the very bytes
    the content digest was checked over — instead of reading the file again. A chunked digest's
    pieces then travel with those bytes (``TensorSource.raw_digests``): a commit whose frames are
    the pieces records them instead of hashing the same private bytes again. Pieces hash on every
    core (``workers``, default the CPU count).
    """
    path = Path(path)
    try:
        model = open_model(path)
    except ApplianceError as exc:
        raise ExportFileError(f"{path.name} is not a readable safetensors file: {exc.problem}") from exc
    try:
        info = ExportInfo.from_header(model.metadata.get(HEADER_KEY))
        kept = keep if keep is not None and model.raw_bytes <= keep.limit else None
        with _pool(workers or os.cpu_count() or 1) as pool:
            _check_content(model, info, kept, pool)
    except ApplianceError as exc:
        model.close()
        if isinstance(exc, ExportFileError):
            raise
        raise ExportFileError(f"{path.name} is not a valid state export: {exc.problem}") from exc
    return OpenedExport(path, info, model)


def _check_content(model: ImportedModel, info: ExportInfo, keep: LastCommit | None, pool: ThreadPoolExecutor) -> None:
    if len(model.sources) != info.tensors or model.raw_bytes != info.raw_bytes:
        raise ExportFileError(
            f"export holds {len(model.sources)} tensors / {model.raw_bytes} bytes, "
            f"its header says {info.tensors} / {info.raw_bytes}"
        )
    chunk = info.content_chunk
    hasher: ContentHasher | ChunkedContentHasher = ContentHasher() if chunk is None else ChunkedContentHasher(chunk)
    loaded: dict[str, tuple[U8, Pieces | None]] = {}
    for source in sorted(model.sources, key=lambda s: s.name):
        data = _read_once(source, keep) if keep is not None else source.load()
        pieces = None
        if isinstance(hasher, ChunkedContentHasher):
            pieces = _pieces(pool, data, DTYPES[source.dtype].itemsize, hasher.chunk)
            hasher.add(source.name, source.dtype, source.shape, data.size, (bytes.fromhex(h) for h in pieces.values()))
        else:
            hasher.add(source.name, source.dtype, source.shape, data.data)
        if keep is not None:
            loaded[source.name] = (data, pieces)
    if hasher.hexdigest() != info.content_sha256:
        raise ExportFileError("export content does not match its content_sha256 (damaged or altered)")
    if keep is not None:  # the commit takes the checked bytes (and their pieces), not a second read of the file
        model.sources[:] = [_checked(s, *loaded[s.name]) for s in model.sources]


def _checked(source: TensorSource, data: U8, pieces: Pieces | None) -> TensorSource:
    return replace(source, load=_loaded(data), raw_digests=pieces)


def _loaded(data: U8) -> Callable[[], U8]:
    return lambda: data


def _read_once(source: TensorSource, keep: LastCommit) -> U8:
    data = keep.take(math.prod(source.shape) * DTYPES[source.dtype].itemsize)
    if source.load_into is not None:
        source.load_into(data)
    else:
        data[:] = source.load()
    return data


def remove_durably(path: Path) -> None:
    """Unlink ``path`` and sync its directory (a committed export must not come back)."""
    storage = LocalStorage(path.parent)
    try:
        storage.unlink(path.name)
    except FileNotFoundError:
        return
    storage.fsync_dir("")
