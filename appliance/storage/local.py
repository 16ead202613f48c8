"""``LocalStorage``: the ``Storage`` protocol on a local POSIX file system.

Owns: safe path resolution (every component opened relative to its parent's descriptor with
``O_NOFOLLOW``, so a planted symlink is refused, never followed), regular-file checks, and
exact-size reads. Does not own durability ordering (``durable``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from appliance.errors import LimitExceededError, StorageError, UnsafePathError
from appliance.storage import mapping
from appliance.storage.base import split_path, translate_os_error

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Never world-readable (weights are the owner's): the store user writes, group ``appliance``
# (the model service) reads; others get nothing, whatever the process umask (docs/design.md §7).
STORE_FILE_MODE = 0o640
STORE_DIR_MODE = 0o750


class LocalStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # --- resolution ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _dir(self, parts: list[str], action: str, path: str) -> Iterator[int]:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise translate_os_error(exc, action, path) from exc
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    raise
                except OSError as exc:
                    raise translate_os_error(exc, action, path) from exc
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _call(self, action: str, path: str, fn: object, *args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)  # type: ignore[operator]
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise translate_os_error(exc, action, path) from exc

    @contextlib.contextmanager
    def _open_regular(self, path: str, action: str) -> Iterator[tuple[int, int]]:
        *dirs, name = split_path(path)
        with self._dir(dirs, action, path) as dfd:
            fd: int = self._call(action, path, os.open, name, _READ_FLAGS, dir_fd=dfd)  # type: ignore[assignment]
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise UnsafePathError(f"{path} is not a regular file")
                yield fd, st.st_size
            finally:
                os.close(fd)

    # --- reads -----------------------------------------------------------------------------

    def read(self, path: str, max_size: int) -> bytes:
        with self._open_regular(path, "read") as (fd, size):
            if size > max_size:
                raise LimitExceededError(f"{path} is {size} bytes, above the cap of {max_size}")
            buf = bytearray(size)
            got = self._readinto(fd, memoryview(buf), path)
            if got != size or os.pread(fd, 1, size):
                raise StorageError(f"{path} changed size while it was read")
            return bytes(buf)

    def read_into(self, path: str, out: memoryview) -> int:
        with self._open_regular(path, "read") as (fd, size):
            self._readinto(fd, out[: min(size, len(out))], path)
            return size

    def _readinto(self, fd: int, out: memoryview, path: str) -> int:
        filled = 0
        while filled < len(out):
            n: int = self._call("read", path, os.preadv, fd, [out[filled:]], filled)  # type: ignore[assignment]
            if n == 0:
                break
            filled += n
        return filled

    # --- optional capabilities (appliance.storage.mapping) -------------------------------------

    def map_into(self, path: str, region: mapping.Region, offset: int, size: int) -> str | None:
        """Map ``path`` copy-on-write into ``region`` if it is sealed and exactly ``size`` bytes."""
        with self._open_regular(path, "map") as (fd, actual):
            if actual != size:
                return f"file has {actual} bytes, expected {size}"
            reason = mapping.unsealed_reason(fd, os.fstat(fd))
            if reason is not None:
                return reason
            try:
                region.map_file(fd, offset, size)
            except OSError as exc:
                if mapping.is_mapping_error(exc):
                    return f"the file system refused the mapping ({exc.strerror})"
                raise translate_os_error(exc, "map", path) from exc
            return None

    def prefetch(self, path: str) -> None:
        """Start reading ``path`` into the page cache; a missing file is ignored."""
        with (
            contextlib.suppress(FileNotFoundError, StorageError, UnsafePathError),
            self._open_regular(path, "prefetch") as (fd, _),
        ):
            mapping.advise_willneed(fd)

    def evict(self, path: str) -> None:
        """Drop ``path``'s clean pages from the page cache (the restore-time probe's cold read)."""
        with (
            contextlib.suppress(FileNotFoundError, StorageError, UnsafePathError),
            self._open_regular(path, "evict") as (fd, _),
        ):
            mapping.advise_dontneed(fd)

    def size(self, path: str) -> int | None:
        *dirs, name = split_path(path)
        try:
            with self._dir(dirs, "stat", path) as dfd:
                st: os.stat_result = self._call("stat", path, os.stat, name, dir_fd=dfd, follow_symlinks=False)  # type: ignore[assignment]
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{path} is not a regular file")
        return st.st_size

    def listdir(self, path: str) -> list[str] | None:
        try:
            with self._dir(split_path(path), "list", path) as dfd:
                names: list[str] = self._call("list", path, os.listdir, dfd)  # type: ignore[assignment]
                return sorted(names)
        except FileNotFoundError:
            return None

    def is_dir(self, path: str) -> bool:
        return self.listdir(path) is not None

    # --- writes ----------------------------------------------------------------------------

    def write_new(self, path: str, data: bytes | memoryview) -> None:
        *dirs, name = split_path(path)
        with self._dir(dirs, "create", path) as dfd:
            fd: int = self._call("create", path, os.open, name, _NEW_FLAGS, STORE_FILE_MODE, dir_fd=dfd)  # type: ignore[assignment]
            try:
                view = memoryview(data).cast("B")
                while view:
                    n: int = self._call("write", path, os.write, fd, view)  # type: ignore[assignment]
                    view = view[n:]
            finally:
                os.close(fd)

    def fsync(self, path: str) -> None:
        with self._open_regular(path, "fsync") as (fd, _):
            self._call("fsync", path, os.fsync, fd)

    def fsync_dir(self, path: str) -> None:
        with self._dir(split_path(path), "fsync directory", path) as dfd:
            self._call("fsync directory", path, os.fsync, dfd)

    def rename(self, src: str, dst: str) -> None:
        *sdirs, sname = split_path(src)
        *ddirs, dname = split_path(dst)
        if sdirs != ddirs:
            raise ValueError("rename must stay within one directory")
        with self._dir(sdirs, "rename", dst) as dfd:
            self._call("rename", dst, os.rename, sname, dname, src_dir_fd=dfd, dst_dir_fd=dfd)

    def unlink(self, path: str) -> None:
        *dirs, name = split_path(path)
        with self._dir(dirs, "remove", path) as dfd:
            self._call("remove", path, os.unlink, name, dir_fd=dfd)

    def mkdir(self, path: str) -> None:
        *dirs, name = split_path(path)
        with self._dir(dirs, "create directory", path) as dfd:
            self._call("create directory", path, os.mkdir, name, STORE_DIR_MODE, dir_fd=dfd)

    def free_bytes(self, path: str) -> int:
        with self._dir(split_path(path), "stat", path) as dfd:
            st = os.statvfs(dfd)
        return st.f_bavail * st.f_frsize
