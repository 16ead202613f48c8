"""The ``Storage`` protocol: every byte the store reads or writes passes through these calls.

Owns: the interface and its path rules. Does not own durability policy (``durable``) or any
file's meaning. Paths are relative, ``/``-separated, with no empty, ``.`` or ``..`` parts;
``""`` is the store root. Implementations must never follow a symlink inside the root.

Crash model the interface is designed for (docs/design.md §6): ``write_new`` data is durable
only after ``fsync(path)``; a new name (create, rename, unlink, mkdir) is durable only after
``fsync_dir(parent)``. Missing files raise ``FileNotFoundError``; every other OS failure is
translated to an ``appliance.errors.StorageError`` subclass.
"""

from __future__ import annotations

import errno
from typing import Protocol, runtime_checkable

from appliance.errors import (
    StorageError,
    StorageFullError,
    StorageIOError,
    UnsafePathError,
)


@runtime_checkable
class Storage(Protocol):
    def read(self, path: str, max_size: int) -> bytes:
        """Whole regular file; ``LimitExceededError`` if larger than ``max_size``."""
        ...

    def read_into(self, path: str, out: memoryview) -> int:
        """Fill ``out`` from the file's start; return the file's full size (may differ)."""
        ...

    def size(self, path: str) -> int | None:
        """Size of a regular file, ``None`` if absent."""
        ...

    def listdir(self, path: str) -> list[str] | None:
        """Sorted entry names, ``None`` if the directory is absent."""
        ...

    def write_new(self, path: str, data: bytes | memoryview) -> None:
        """Create ``path`` exclusively and write ``data``; not durable until ``fsync``."""
        ...

    def fsync(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src``; both in the same directory."""
        ...

    def fsync_dir(self, path: str) -> None: ...

    def unlink(self, path: str) -> None: ...

    def mkdir(self, path: str) -> None: ...

    def free_bytes(self, path: str) -> int: ...


def split_path(path: str) -> list[str]:
    parts = path.split("/") if path else []
    if any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise ValueError(f"invalid store path {path!r}")
    return parts


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def translate_os_error(exc: OSError, action: str, path: str) -> StorageError | UnsafePathError:
    """Map an OS error to the exception that tells the operator what to do."""
    where = f"{action} {path or '<root>'}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"no space left to {where}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePathError(f"refused to {where}: a symlink or non-directory is in the path")
    if exc.errno == errno.EIO:
        return StorageIOError(f"I/O error while trying to {where}")
    if exc.errno == errno.EROFS:
        return StorageError(f"cannot {where}: the file system is read-only")
    return StorageError(f"cannot {where}: {exc.strerror or exc}")
