"""The one durable-write helper: temp file -> fsync -> rename -> fsync directory.

Owns: making a file durable under its final name, atomically. Does not own the order in
which a commit makes files durable (``appliance.store.commit``), only each step's order.

``DurableBatch`` is the same helper for many files: each file is written, fsynced and renamed
as it is added; ``sync()`` then fsyncs every touched directory once. Nothing may reference a
batch's files until ``sync()`` returned (rule R3 in docs/design.md §6). After any error the
batch is broken and refuses further use: an fsync error is never retried into a commit (R4).
``add`` may be called from several threads at once (the commit overlaps frame writes).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading

from appliance.errors import StorageError
from appliance.storage.base import Storage, parent_of

TEMP_PREFIX = ".tmp-"
_counter = itertools.count()


def temp_name(path: str) -> str:
    parent, _, name = path.rpartition("/")
    temp = f"{TEMP_PREFIX}{os.getpid()}-{next(_counter)}-{name}"
    return f"{parent}/{temp}" if parent else temp


class DurableBatch:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._dirs: set[str] = set()
        self._broken: BaseException | None = None
        self.written: list[str] = []
        self._lock = threading.Lock()

    def add(self, path: str, data: bytes | memoryview) -> None:
        if self._broken is not None:
            raise StorageError("an earlier write of this commit failed; the commit is abandoned") from self._broken
        temp = temp_name(path)
        try:
            self.storage.write_new(temp, data)
            self.storage.fsync(temp)
            self.storage.rename(temp, path)
        except BaseException as exc:
            with self._lock:
                self._broken = self._broken or exc
            _remove_quietly(self.storage, temp)
            raise
        with self._lock:
            self.written.append(path)
            self._dirs.add(parent_of(path))

    def sync(self) -> None:
        if self._broken is not None:
            raise StorageError("an earlier write of this commit failed; the commit is abandoned") from self._broken
        try:
            for directory in sorted(self._dirs):
                self.storage.fsync_dir(directory)
        except BaseException as exc:
            self._broken = exc
            raise
        self._dirs.clear()


def write_durable(storage: Storage, path: str, data: bytes | memoryview) -> None:
    batch = DurableBatch(storage)
    batch.add(path, data)
    batch.sync()


def _remove_quietly(storage: Storage, path: str) -> None:
    with contextlib.suppress(OSError, StorageError):
        storage.unlink(path)
