"""Writer exclusion: one process at a time commits, collects garbage or repairs a store.

Owns: the advisory ``flock`` on ``ROOT/lock``. Readers (boot, verify) take no lock: they
trust only committed records and fall back when a file vanishes under them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from appliance.errors import LockedError, StorageError


@contextlib.contextmanager
def writer_lock(path: Path | None, wait: bool = False) -> Iterator[None]:
    if path is None:  # storage without a local root (tests with in-memory storage)
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            raise LockedError(f"{path} is held by another process") from exc
        yield
    finally:
        os.close(fd)
