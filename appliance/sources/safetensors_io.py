"""Import from ``.safetensors`` files and Hugging Face model directories; export to safetensors.

Owns: finding shards (``model.safetensors.index.json`` or every ``*.safetensors`` file),
checking an index against what the shards hold, keeping each shard's ``__metadata__``,
lazy per-tensor loading, and writing a safetensors file atomically. Does not own committing
or the non-tensor files of a directory (``appliance.sources.model_dir``).

Every parse goes through the safetensors library (header capped at 100 MB, offsets checked,
fuzzed upstream); its errors become ``SourceFormatError``. Index files are parsed with our
strict JSON reader and shard names must be plain file names inside the model directory. Dtypes
map through the one table in ``appliance.format.dtypes``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from appliance.codec.transform import U8
from appliance.errors import (
    ApplianceError,
    ManifestError,
    ReservedNameError,
    SourceChangedError,
    SourceFormatError,
    UsageError,
)
from appliance.format.canonical import strict_loads
from appliance.format.directory import (
    EMPTY_WEIGHT_MAP,
    HEADER_NAMESPACE,
    INDEX_NAME,
    INDEX_REMEDY,
    ShardEntry,
    check_reserved_names,
    index_defect,
    is_shard_name,
    left_out_shards,
    source_header_metadata,
)
from appliance.format.dtypes import DTYPES, from_safetensors, safetensors_code
from appliance.format.shown import shown
from appliance.format.validate import validate_tensor_name
from appliance.sources.stable import ShardHeader, StableFile, hash_whole_file, safetensors_offsets
from appliance.store.encode import TensorSource
from appliance.store.reread import WholeFileRead

if TYPE_CHECKING:  # torch only to write: the persistence watchdog reads exports without importing it
    import torch

INDEX_MAX_BYTES = 64 * 1024 * 1024
DTYPE_REMEDY = (
    "the file may be valid, but its tensor's dtype is not one both safetensors and torch know (docs/design.md "
    "§4.5 Dtypes): convert that tensor to a supported dtype (e.g. bfloat16 or an F8 type) and commit again"
)
NAMES_SHOWN = 5


@dataclass
class ImportedModel:
    """Tensors of a source, loaded lazily one at a time; ``close()`` releases the files.

    ``metadata`` merges every shard's raw ``__metadata__`` (``appliance.*`` keys included, for
    the export path); ``shards`` keeps each one separately as recorded in the manifest.
    """

    sources: list[TensorSource]
    metadata: dict[str, str]
    files: list[Path]
    shards: list[ShardEntry] = field(default_factory=list)
    index_metadata: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None  # the model directory (None for a single file)
    # per shard file name: its SHA-256 as the commit uses it, re-reading every tensor (``hash_whole_file``)
    whole_file_reads: dict[str, WholeFileRead] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for handle in self._handles:
            if isinstance(handle, StableFile):
                handle.close()
        self._handles.clear()

    @property
    def dropped_header_keys(self) -> list[str]:
        """Source header keys in appliance's namespace: not kept (they describe an earlier restore)."""
        return sorted(k for k in self.metadata if k.startswith(HEADER_NAMESPACE))

    @property
    def raw_bytes(self) -> int:
        return sum(math.prod(s.shape) * DTYPES[s.dtype].itemsize for s in self.sources)


@dataclass(frozen=True)
class SourceIndex:
    weight_map: dict[str, str]
    metadata: dict[str, Any]


@contextlib.contextmanager
def _wrap(path: Path) -> Iterator[None]:
    try:
        yield
    except SafetensorError as exc:
        raise SourceFormatError(f"{path} is not a valid safetensors file: {exc}") from exc
    except OSError as exc:
        raise SourceFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _listing(names: list[str], total: int | None = None) -> str:
    total = len(names) if total is None else total
    shown = ", ".join(repr(n) for n in sorted(names)[:NAMES_SHOWN])
    return shown + (f" and {total - NAMES_SHOWN} more" if total > NAMES_SHOWN else "")


def inside(root: Path, path: Path, error: type[ApplianceError] = SourceFormatError) -> Path:
    """``path`` as a regular file inside ``root``: a link may point only to a file inside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise error(f"{path} is a link to {resolved}, outside the model directory {root}")
    if not resolved.is_file():
        raise error(f"{path} is not a regular file (directory link, device, socket or dangling link)")
    return resolved


def read_index(index: Path) -> SourceIndex:
    """A ``model.safetensors.index.json``: a non-empty ``weight_map`` of safe shard names."""
    with _wrap(index):
        data = index.read_bytes()
    try:
        obj = strict_loads(data, what=str(index), max_bytes=INDEX_MAX_BYTES, max_depth=8)
    except ApplianceError as exc:
        problem = f"{index} is not a valid safetensors index: {exc.problem}"
        raise SourceFormatError(problem, remedy=INDEX_REMEDY) from exc
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    metadata = obj.get("metadata", {}) if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict) or not isinstance(metadata, dict):
        wrong = "weight_map" if not isinstance(weight_map, dict) else "metadata"
        raise SourceFormatError(
            f"{index} is not a valid safetensors index: its {wrong!r} must be a JSON object", remedy=INDEX_REMEDY
        )
    if not weight_map:
        raise SourceFormatError(f"{index} {EMPTY_WEIGHT_MAP}", remedy=INDEX_REMEDY)
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not is_shard_name(shard):
            raise SourceFormatError(
                f"{index} maps tensor {shown(name)} to an unsafe shard file {shown(shard)}", remedy=INDEX_REMEDY
            )
    return SourceIndex(weight_map, metadata)


def shard_files(source: Path) -> tuple[list[Path], SourceIndex | None]:
    """The safetensors files a source path names, in a stable order, and its index if any."""
    if source.is_file():
        return [source], None
    if not source.is_dir():
        raise SourceFormatError(f"{source} does not exist")
    index_path = source / INDEX_NAME
    if index_path.exists() or index_path.is_symlink():
        index = read_index(inside(source, index_path))
        files = [source / n for n in sorted(set(index.weight_map.values()))]
        missing = [f.name for f in files if not (f.exists() or f.is_symlink())]
        if missing:
            raise SourceFormatError(
                f"{index_path} names shards that are missing: {_listing(missing)}",
                remedy="copy the missing shards into the directory (an interrupted download?) or " + INDEX_REMEDY,
            )
        for f in files:
            inside(source, f)
        check_left_out(source, index)
        return files, index
    files = sorted(p for p in source.iterdir() if p.name.endswith(".safetensors") and is_shard_name(p.name))
    if not files:
        raise SourceFormatError(f"{source} holds no .safetensors files")
    for f in files:
        inside(source, f)
    return files, None


def check_left_out(source: Path, index: SourceIndex) -> None:
    """No weight file of the index's set is left out of it (``left_out_shards``), naming their tensors."""
    present = [p.name for p in source.iterdir() if is_shard_name(p.name)]
    names, total = left_out_shards(index.weight_map.values(), present, NAMES_SHOWN)
    if not total:
        return
    held = [f"{n} (holds {_listing(_tensor_names(source / n))})" if n in present else f"{n} (absent)" for n in names]
    more = f" and {total - len(names)} more" if total > len(names) else ""
    raise SourceFormatError(
        f"{source / INDEX_NAME} leaves out weight files of its shard set, which would be lost or loaded "
        f"instead of the index: {'; '.join(held)}{more}",
        remedy=INDEX_REMEDY + "; remove a stray shard file that is not part of the model",
    )


def _tensor_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header (a message detail: [] if unreadable)."""
    try:
        with safe_open(str(inside(path.parent, path)), framework="pt") as handle:
            return list(handle.keys())
    except (ApplianceError, SafetensorError, OSError):
        return []


def open_model(source: str | Path) -> ImportedModel:
    """Open a file or model directory; every defect is a typed error before anything is committed."""
    source = Path(source)
    files, index = shard_files(source)
    model = ImportedModel([], {}, files, root=source if source.is_dir() else None)
    held: dict[str, str] = {}
    for path in files:
        stable: StableFile | None = None
        try:
            with _wrap(path):
                stable = StableFile(path)  # tensor bytes are read with pread, never mmap (no SIGBUS)
                model._handles.append(stable)
                handle = safe_open(str(path), framework="pt")  # validates the structure
                model._handles.append(handle)
                header = dict(handle.metadata() or {})  # type: ignore[no-untyped-call]
                names = list(handle.keys())  # type: ignore[no-untyped-call]
                shard = safetensors_offsets(stable)
                _same_header(stable, shard, handle, header, names)
        except SourceFormatError:
            if stable is not None:
                stable.check()  # changed while it was opened: a changed source (20), not a malformed one (12)
            raise
        check_reserved_names(names)
        check_shard_header(path, header, names)
        model.metadata.update(header)
        model.shards.append(ShardEntry(path.name, tuple(names), source_header_metadata(header)))
        for name in names:
            if name in held:
                raise SourceFormatError(
                    f"tensor {shown(name)} appears in two shards: {held[name]} and {path.name}",
                    remedy="keep each tensor in one shard: remove the stray copy or save the model again",
                )
            held[name] = path.name
            model.sources.append(_lazy_source(path, handle, name, stable, shard.offsets[name]))
        model.whole_file_reads[path.name] = functools.partial(hash_whole_file, stable, shard)
    if index is not None:
        check_index(source / INDEX_NAME, index, held)
        model.index_metadata = dict(index.metadata)
    return model


def check_shard_header(path: Path, header: Mapping[str, str], names: list[str]) -> None:
    """What the manifest cannot record exactly is refused naming the file and the fix (``SourceFormatError``):
    a tensor name outside the label rules (§4.3 rule 1, e.g. not NFC) or an empty ``__metadata__`` key."""
    for name in names:
        try:
            validate_tensor_name(name)
        except ManifestError as exc:
            raise SourceFormatError(
                f"{path}: {exc.problem}",
                remedy=f"rename the tensor in {path.name} (Unicode NFC, no control characters, backslashes or "
                "'.'/'..'/empty path parts; e.g. unicodedata.normalize('NFC', name)) and save the file again",
            ) from exc
    if "" in header:
        raise SourceFormatError(
            f'{path}: its safetensors __metadata__ has an empty key ("": {header[""]!r:.40}); appliance keeps a '
            "shard's header metadata exactly, but each key must be a non-empty string",
            remedy=f"give that key a name or drop it: save {path.name} again with metadata that has no empty key "
            "(e.g. safetensors' save_file(tensors, path, metadata=...))",
        )


def _same_header(stable: StableFile, shard: ShardHeader, handle: Any, header: Any, names: list[str]) -> None:
    """The safetensors library (which validated the file) and our ``pread`` saw the same header: what
    the commit records (names, dtypes, shapes, ``__metadata__``) is ``shard.raw``, the bytes a vendor
    signature check hashes (design §6.2.1). A difference is a file written while it was opened."""
    seen: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in names:
        info = handle.get_slice(name)
        seen[name] = (info.get_dtype(), tuple(info.get_shape()))
    if seen != shard.tensors or header != shard.metadata:
        stable.check()
        raise SourceChangedError(f"{stable.path} changed while it was opened (its header read twice differs)")


def check_index(path: Path, index: SourceIndex, held: Mapping[str, str]) -> None:
    """The index and the shards agree exactly: no tensor lost, unnamed or in another shard."""
    defect = index_defect(index.weight_map, held)
    if defect is not None:
        what, names = defect
        raise SourceFormatError(f"{path}: {what}" + (f": {_listing(names)}" if names else ""), remedy=INDEX_REMEDY)


def _lazy_source(path: Path, handle: Any, name: str, stable: StableFile, span: tuple[int, int]) -> TensorSource:
    """One tensor, read with ``pread`` when committed; the file must not change (``StableFile``)."""
    with _wrap(path):
        info = handle.get_slice(name)
        code, st_shape = info.get_dtype(), tuple(info.get_shape())
    try:
        dtype, shape = from_safetensors(code, st_shape)
    except ValueError as exc:
        raise SourceFormatError(f"{path}: tensor {shown(name)}: {exc}", remedy=DTYPE_REMEDY) from exc
    begin, end = span
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise SourceFormatError(
            f"{path}: tensor {shown(name)} spans {end - begin} bytes, its dtype and shape need more"
        )

    def load() -> U8:
        return stable.read(begin, end - begin)

    def load_into(out: U8) -> None:
        stable.read(begin, end - begin, out)

    return TensorSource(name, dtype.name, shape, load, recheck=stable.check, load_into=load_into)


def check_exportable(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Refuse, naming it, anything a safetensors file cannot hold (before a byte is written)."""
    from appliance.sources.tensors import dtype_name  # torch: only writers get here

    check_reserved_names(tensors)
    for name, t in tensors.items():
        try:
            safetensors_code(dtype_name(t.dtype))
        except ValueError as exc:
            raise UsageError(
                f"tensor {shown(name)}: {exc}", remedy="restore it with the Python API (appliance.api.load) instead"
            ) from exc
    bad = [k for k in metadata if not isinstance(k, str) or not isinstance(metadata[k], str)]
    if bad:
        raise UsageError(f"safetensors header metadata must map strings to strings: {bad[:3]}")


def process_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def export_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` to ``path`` atomically (temp file, fsync, rename, fsync directory)."""
    path = Path(path)
    from safetensors.torch import save_file  # imports torch: only the writers (service, restore) need it

    check_exportable(tensors, metadata)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(temp), metadata=dict(metadata))
        fd = os.open(temp, os.O_RDONLY)
        try:
            # safetensors creates its file 0600 whatever the umask; an export is read by the persistence
            # watchdog's user (group appliance, docs/design.md §7.2), so the process umask decides, as for open()
            os.fchmod(fd, 0o666 & ~process_umask())
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
    except (KeyError, ValueError, SafetensorError) as exc:  # an older safetensors without this dtype
        temp.unlink(missing_ok=True)
        raise UsageError(
            f"this safetensors library cannot write {path.name}: {exc}",
            remedy="upgrade safetensors (>= 0.6 stores every dtype in the table) or restore with the Python API",
        ) from exc
    return path


def check_header_keys(header: Mapping[str, str]) -> None:
    """Header metadata given by a caller: no key in appliance's namespace (API and CLI)."""
    ours = sorted(k for k in header if str(k).startswith(HEADER_NAMESPACE))
    if ours:
        raise ReservedNameError(f"header metadata key {ours[0]!r} is in appliance's reserved namespace")
