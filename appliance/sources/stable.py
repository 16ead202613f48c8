"""Reading source files that may change under a commit: ``pread`` into buffers, identity re-checks.

Owns: ``identity_guard`` (the same rule for files read with ordinary reads: assets) and
``StableFile`` — a source file (a safetensors shard, an asset) opened once and read with
``pread`` into private buffers, never memory-mapped: a file truncated while it is read gives a
short read and a typed ``SourceChangedError``, never a ``SIGBUS`` that kills the process
(issue 12, kind 5). Does not own parsing (``safetensors_io``) or committing.

Stability rule (docs/design.md §6.2.1): the file's identity — device, inode, size, mtime and
ctime, and that the path still names the same inode — is recorded when it is opened, checked
after every read and once more by the commit after the last frame is durable and before the
bundle is written (``TensorSource.recheck``). Any difference (truncated, grown, rewritten in
place, replaced by a rename) raises ``SourceChangedError``: nothing is committed and the
commit removes the frames it wrote, so a checkpoint is never a mixture of two versions of a
file. ctime cannot be set by a user; a file modified within ``SETTLE_S`` of being opened is
given that long to settle first, so coarse file-system timestamps cannot hide a rewrite that
lands in the same clock tick as the last one before the open.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.codec.transform import U8
from appliance.errors import SourceChangedError, SourceFormatError
from appliance.format.canonical import strict_loads
from appliance.format.shown import shown

SETTLE_S = 0.05
HEADER_MAX_BYTES = 100 * 1024 * 1024  # the safetensors library's own cap
CHUNK = 1 << 20


@dataclass(frozen=True)
class Identity:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def difference(self, other: Identity) -> str:
        if (self.dev, self.ino) != (other.dev, other.ino):
            return "was replaced by another file"
        if other.size < self.size:
            return f"was truncated from {self.size} to {other.size} bytes"
        if other.size > self.size:
            return f"grew from {self.size} to {other.size} bytes"
        if other.mtime_ns != self.mtime_ns:
            return "was rewritten in place (its modification time changed)"
        return "had its inode changed (unlinked, renamed over, or its mode or owner changed: its ctime moved)"


class StableFile:
    """One source file, read by offset with ``pread``; ``check()`` raises if it changed since it was opened."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.fd: int | None = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(self.fd)
            if time.time_ns() - st.st_ctime_ns < SETTLE_S * 1e9:
                time.sleep(SETTLE_S)
                st = os.fstat(self.fd)
        except OSError as exc:
            raise SourceFormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        self.identity = Identity.of(st)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()

    def check(self) -> None:
        """Raise ``SourceChangedError`` if the file (or the name that led to it) changed since it was opened."""
        if self.fd is None:
            raise SourceChangedError(f"{self.path} was closed before the commit finished")
        try:  # the name first: a file moved over it also changes the open inode's ctime (its link is gone)
            named: Identity | None = Identity.of(self.path.stat())
        except OSError:
            named = None
        now = Identity.of(os.fstat(self.fd))
        for seen in (named, now):
            if seen is not None and seen != self.identity:
                raise SourceChangedError(f"{self.path} {self.identity.difference(seen)} while it was committed")
        if named is None:
            raise SourceChangedError(f"{self.path} was removed or renamed while it was committed")

    def read(self, offset: int, size: int, out: U8 | None = None) -> U8:
        """``size`` bytes at ``offset`` in ``out`` or a new private buffer; a short read is a changed source."""
        if self.fd is None:
            raise SourceChangedError(f"{self.path} was closed before it was read")
        if offset < 0 or offset + size > self.identity.size:
            raise SourceFormatError(f"{self.path}: bytes {offset}..{offset + size} lie outside the file")
        if out is None:
            out = np.empty(size, dtype=np.uint8)
        elif out.size != size or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"read of {size} bytes into a buffer of {out.size}")
        view = memoryview(out.data)
        done = 0
        while done < size:
            try:
                got = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as exc:
                raise SourceFormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
            if got == 0:
                self.check()  # explains how it changed
                raise SourceChangedError(f"{self.path} ended early while it was committed")
            done += got
        self.check()
        return out


def identity_guard(path: Path) -> tuple[Identity, Callable[[], None]]:
    """``path``'s settled identity now, and a check that it still names exactly that file.

    For files read with ordinary reads (assets): the check raises ``SourceChangedError`` (20)
    when the path was removed or renamed, or the file it names differs in any identity field.
    Raises ``OSError`` when ``path`` cannot be stat'ed now.
    """
    st = path.stat()
    if time.time_ns() - st.st_ctime_ns < SETTLE_S * 1e9:
        time.sleep(SETTLE_S)
        st = path.stat()
    seen = Identity.of(st)

    def check() -> None:
        try:
            now = Identity.of(path.stat())
        except OSError:
            raise SourceChangedError(f"{path} was removed or renamed while it was committed") from None
        if now != seen:
            raise SourceChangedError(f"{path} {seen.difference(now)} while it was committed")

    return seen, check


def tree_identities(root: Path) -> dict[str, Identity]:
    """The identity of every regular file under ``root`` (symlinks followed, directories not entered
    through links), settled as ``identity_guard`` settles one file. Compared before and after a
    verification to prove the files verified are the files read (vendor signatures, design §5.5)."""

    def snapshot() -> dict[str, Identity]:
        out: dict[str, Identity] = {}
        for here, _, files in os.walk(root):
            for name in files:
                path = Path(here) / name
                with contextlib.suppress(OSError):  # vanished: absent from the map, so the maps differ
                    out[str(path.relative_to(root))] = Identity.of(path.stat())
        return out

    first = snapshot()
    if any(time.time_ns() - i.ctime_ns < SETTLE_S * 1e9 for i in first.values()):
        time.sleep(SETTLE_S)
        first = snapshot()
    return first


@dataclass(frozen=True)
class ShardHeader:
    """A safetensors file's header as ``pread`` read it: its bytes (length prefix included) and parse."""

    raw: bytes  # the first 8 + N bytes of the file, exactly as read
    offsets: dict[str, tuple[int, int]]  # absolute byte range of each tensor
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # safetensors dtype code and shape of each tensor
    metadata: dict[str, Any]  # its ``__metadata__`` ({} if absent)


def safetensors_offsets(stable: StableFile) -> ShardHeader:
    """Absolute byte ranges of every tensor of a safetensors file (its structure is checked elsewhere)."""
    prefix = bytes(stable.read(0, 8))
    (length,) = struct.unpack("<Q", prefix)
    if length > HEADER_MAX_BYTES or 8 + length > stable.identity.size:
        raise SourceFormatError(f"{stable.path}: safetensors header of {length} bytes does not fit the file")
    raw = bytes(stable.read(8, length))
    try:
        header: Any = strict_loads(raw, what=f"{stable.path} header", max_bytes=HEADER_MAX_BYTES, max_depth=8)
        base = 8 + length
        offsets: dict[str, tuple[int, int]] = {}
        tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            offsets[name] = (base + int(begin), base + int(end))
            tensors[name] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        metadata = dict(header.get("__metadata__") or {})
    except Exception as exc:
        raise SourceFormatError(f"{stable.path}: safetensors header is not valid JSON: {exc}") from exc
    return ShardHeader(prefix + raw, offsets, tensors, metadata)


def hash_whole_file(stable: StableFile, header: ShardHeader, each: Callable[[str, U8], None]) -> str:
    """SHA-256 of the file as the commit uses it: ``header.raw`` (read when it was opened) and every byte
    after it read again now; each tensor's bytes of this read are handed to ``each`` in file order.

    What ``each`` checks (the frames committed) and what is hashed (compared with a vendor's signed
    digest) are therefore the same bytes (design §6.2.1)."""
    digest = hashlib.sha256(header.raw)
    pos, size = len(header.raw), stable.identity.size
    for name, (begin, end) in sorted(header.offsets.items(), key=lambda item: item[1]):
        if begin < pos:
            raise SourceFormatError(f"{stable.path}: tensor {shown(name)} overlaps the bytes before it")
        for gap in range(pos, begin, CHUNK):  # bytes no tensor holds (none in a file safetensors accepts)
            digest.update(stable.read(gap, min(CHUNK, begin - gap)).data)
        data = stable.read(begin, end - begin)
        digest.update(data.data)
        each(name, data)
        pos = end
    for rest in range(pos, size, CHUNK):
        digest.update(stable.read(rest, min(CHUNK, size - rest)).data)
    return digest.hexdigest()
