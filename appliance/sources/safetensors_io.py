"""Import from ``.safetensors`` files and Hugging Face model directories; export to safetensors.

Owns: finding shards (``model.safetensors.index.json`` or every ``*.safetensors`` file),
lazy per-tensor loading, and writing an export atomically. Does not own committing.

Every parse goes through the safetensors library (header capped at 100 MB, offsets checked,
fuzzed upstream); its errors become ``SourceFormatError``. Index files are parsed with our
strict JSON reader and shard names must be plain file names inside the model directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from appliance.codec.transform import U8
from appliance.errors import ApplianceError, SourceFormatError, UsageError
from appliance.format.canonical import strict_loads
from appliance.format.dtypes import DTYPES
from appliance.sources.tensors import byte_view, dtype_name
from appliance.store.encode import TensorSource

INDEX_NAME = "model.safetensors.index.json"
INDEX_MAX_BYTES = 64 * 1024 * 1024
_SHARD_NAME = re.compile(r"[^/\\\x00]+\.safetensors")

_ST_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
    "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu", "C64": "complex64",
}  # fmt: skip


@dataclass
class ImportedModel:
    """Tensors of a source, loaded lazily one at a time; ``close()`` releases the files."""

    sources: list[TensorSource]
    metadata: dict[str, str]
    files: list[Path]
    _handles: list[Any] = field(default_factory=list, repr=False)

    def close(self) -> None:
        self._handles.clear()

    @property
    def raw_bytes(self) -> int:
        return sum(math.prod(s.shape) * DTYPES[s.dtype].itemsize for s in self.sources)


@contextlib.contextmanager
def _wrap(path: Path) -> Iterator[None]:
    try:
        yield
    except SafetensorError as exc:
        raise SourceFormatError(f"{path} is not a valid safetensors file: {exc}") from exc
    except OSError as exc:
        raise SourceFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def shard_files(source: Path) -> list[Path]:
    """The safetensors files a source path names, in a stable order."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise SourceFormatError(f"{source} does not exist")
    index = source / INDEX_NAME
    if index.is_file():
        with _wrap(index):
            data = index.read_bytes()
        try:
            obj = strict_loads(data, what=str(index), max_bytes=INDEX_MAX_BYTES, max_depth=8)
            names = sorted(set(obj["weight_map"].values()))
        except (ApplianceError, KeyError, TypeError, AttributeError) as exc:
            raise SourceFormatError(f"{index} is not a valid safetensors index: {exc}") from exc
        for name in names:
            if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name) or name.startswith("."):
                raise SourceFormatError(f"{index} names an unsafe shard file {name!r:.80}")
        files = [source / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SourceFormatError(f"{index} names shards that are missing: {', '.join(missing[:5])}")
        return files
    files = sorted(p for p in source.iterdir() if p.suffix == ".safetensors" and p.is_file())
    if not files:
        raise SourceFormatError(f"{source} holds no .safetensors files")
    return files


def open_model(source: str | Path) -> ImportedModel:
    source = Path(source)
    model = ImportedModel([], {}, shard_files(source))
    seen: set[str] = set()
    for path in model.files:
        with _wrap(path):
            handle = safe_open(str(path), framework="pt")
            model._handles.append(handle)
            model.metadata.update(handle.metadata() or {})  # type: ignore[no-untyped-call]
            for name in handle.keys():  # type: ignore[no-untyped-call]  # noqa: SIM118 (not iterable)
                if name in seen:
                    raise SourceFormatError(f"tensor {name!r} appears in more than one shard")
                seen.add(name)
                model.sources.append(_lazy_source(path, handle, name))
    return model


def _lazy_source(path: Path, handle: Any, name: str) -> TensorSource:
    with _wrap(path):
        info = handle.get_slice(name)
        code, shape = info.get_dtype(), tuple(info.get_shape())
    if code not in _ST_DTYPES:
        raise SourceFormatError(f"{path}: tensor {name!r} has dtype {code}, which format v1 does not store")

    def load() -> U8:
        with _wrap(path):
            tensor = handle.get_tensor(name)
        if dtype_name(tensor.dtype) != _ST_DTYPES[code] or tuple(tensor.shape) != shape:
            raise SourceFormatError(f"{path}: tensor {name!r} changed while it was imported")
        return byte_view(tensor.contiguous())

    return TensorSource(name, _ST_DTYPES[code], shape, load)


def export_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` to ``path`` atomically (temp file, fsync, rename, fsync directory)."""
    path = Path(path)
    unsupported = {n: str(t.dtype) for n, t in tensors.items() if dtype_name(t.dtype) not in _ST_DTYPES.values()}
    if unsupported:
        name, dtype = next(iter(unsupported.items()))
        raise UsageError(f"safetensors cannot store {dtype} (tensor {name!r}); restore with the Python API instead")
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(temp), metadata=dict(metadata))
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        temp.replace(path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", remedy="choose a writable output path") from exc
    return path
