"""A ``Storage`` wrapper that fails, or runs a hook at, a chosen call (LevelDB/SQLite I/O-error style).

``FaultyStorage`` numbers every mutating call (create, fsync, rename, fsync directory, remove,
create directory). ``fail_at`` makes call number ``n`` raise exactly what ``LocalStorage``
raises for that errno (``translate_os_error``); a failing create can leave a partial file (the
kernel wrote some blocks before ENOSPC/EIO). ``on_call`` runs a hook before a call instead
(the ext4 tier cuts power there). Reads pass through, optionally through ``on_read``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.storage import Storage
from appliance.storage.base import translate_os_error

MUTATIONS = ("create", "fsync", "rename", "fsync directory", "remove", "create directory")


@dataclass
class Call:
    index: int
    action: str
    path: str


@dataclass
class FaultyStorage:
    inner: Storage
    fail_at: int | None = None
    errno_: int = errno.EIO
    partial: bool = False  # a failing create leaves half of its data behind
    on_call: Callable[[Call], None] | None = None
    on_read: Callable[[str], None] | None = None
    calls: list[Call] = field(default_factory=list)
    failed: Call | None = None

    def _mutation(self, action: str, path: str) -> None:
        call = Call(len(self.calls), action, path)
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        if call.index == self.fail_at:
            self.failed = call
            raise translate_os_error(OSError(self.errno_, os.strerror(self.errno_)), action, path)

    # --- mutations -------------------------------------------------------------------------

    def write_new(self, path: str, data: bytes | memoryview) -> None:
        try:
            self._mutation("create", path)
        except Exception:
            if self.partial:
                self.inner.write_new(path, bytes(data)[: len(data) // 2])
            raise
        self.inner.write_new(path, data)

    def fsync(self, path: str) -> None:
        self._mutation("fsync", path)
        self.inner.fsync(path)

    def rename(self, src: str, dst: str) -> None:
        self._mutation("rename", dst)
        self.inner.rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._mutation("fsync directory", path)
        self.inner.fsync_dir(path)

    def unlink(self, path: str) -> None:
        self._mutation("remove", path)
        self.inner.unlink(path)

    def mkdir(self, path: str) -> None:
        self._mutation("create directory", path)
        self.inner.mkdir(path)

    # --- reads -----------------------------------------------------------------------------

    def _read_hook(self, path: str) -> None:
        if self.on_read is not None:
            self.on_read(path)

    def read(self, path: str, max_size: int) -> bytes:
        self._read_hook(path)
        return self.inner.read(path, max_size)

    def read_into(self, path: str, out: memoryview) -> int:
        self._read_hook(path)
        return self.inner.read_into(path, out)

    def size(self, path: str) -> int | None:
        return self.inner.size(path)

    def listdir(self, path: str) -> list[str] | None:
        return self.inner.listdir(path)

    def free_bytes(self, path: str) -> int:
        return self.inner.free_bytes(path)
