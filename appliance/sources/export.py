"""State export files: a safetensors file whose header carries a content-digested ``ExportInfo``.

Owns: writing an export atomically (temp name, fsync, rename, directory fsync) and opening one
with every check a persist needs before it signs anything: the safetensors structure (a
truncated file fails here), the ``appliance.export`` header, and the content digest over all
tensor bytes. Does not own the outbox (``appliance.persist``) or capturing state (the service).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from appliance.codec.transform import U8
from appliance.errors import ApplianceError, ExportFileError
from appliance.format.canary import Canary
from appliance.format.dtypes import DTYPES
from appliance.format.export import HEADER_KEY, ContentHasher, ExportInfo, export_name
from appliance.sources.safetensors_io import ImportedModel, export_safetensors, open_model
from appliance.sources.tensors import byte_view, dtype_name
from appliance.storage import LocalStorage
from appliance.store.encode import TensorSource
from appliance.store.lastcommit import LastCommit


@dataclass
class OpenedExport:
    path: Path
    info: ExportInfo
    model: ImportedModel

    def close(self) -> None:
        self.model.close()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    hasher = ContentHasher()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        hasher.add(name, dtype_name(t.dtype), tuple(t.shape), byte_view(t).data)
    return hasher.hexdigest()


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
) -> tuple[Path, ExportInfo]:
    """Write ``tensors`` (a private snapshot: nobody may modify them meanwhile) into ``outbox``."""
    outbox = Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    info = ExportInfo(
        model=model,
        step=step,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        content_sha256=tensors_digest(tensors),
        tensors=len(tensors),
        raw_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        pause_s=pause_s,
        canary=canary,
        source=source,
        journal=journal,
        training=training,
    )
    path = outbox / export_name(sequence if sequence is not None else time.time_ns())
    export_safetensors(tensors, path, {HEADER_KEY: info.header_value()})
    return path, info


def open_export(path: str | Path, keep: LastCommit | None = None) -> OpenedExport:
    """Open and fully check an export; ``ExportFileError`` says why it must not be committed.

    ``keep`` (the persistence watchdog's ``LastCommit``): when the state fits its limit, every tensor
    is read once, into buffers ``keep`` recycles, and the commit uses those bytes — the very bytes
    the content digest was checked over — instead of reading the file again.
    """
    path = Path(path)
    try:
        model = open_model(path)
    except ApplianceError as exc:
        raise ExportFileError(f"{path.name} is not a readable safetensors file: {exc.problem}") from exc
    try:
        info = ExportInfo.from_header(model.metadata.get(HEADER_KEY))
        _check_content(model, info, keep if keep is not None and model.raw_bytes <= keep.limit else None)
    except ApplianceError as exc:
        model.close()
        if isinstance(exc, ExportFileError):
            raise
        raise ExportFileError(f"{path.name} is not a valid state export: {exc.problem}") from exc
    return OpenedExport(path, info, model)


def _check_content(model: ImportedModel, info: ExportInfo, keep: LastCommit | None) -> None:
    if len(model.sources) != info.tensors or model.raw_bytes != info.raw_bytes:
        raise ExportFileError(
            f"export holds {len(model.sources)} tensors / {model.raw_bytes} bytes, "
            f"its header says {info.tensors} / {info.raw_bytes}"
        )
    hasher = ContentHasher()
    loaded: dict[str, U8] = {}
    for source in sorted(model.sources, key=lambda s: s.name):
        data = _read_once(source, keep) if keep is not None else source.load()
        hasher.add(source.name, source.dtype, source.shape, data.data)
        if keep is not None:
            loaded[source.name] = data
    if hasher.hexdigest() != info.content_sha256:
        raise ExportFileError("export content does not match its content_sha256 (damaged or altered)")
    if keep is not None:  # the commit takes the checked bytes, not a second read of the file
        model.sources[:] = [replace(s, load=_loaded(loaded[s.name])) for s in model.sources]


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
