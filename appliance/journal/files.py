"""The journal directory's file operations, behind one small interface (the crash model's seam).

Owns: ``JournalFiles`` (append-only segment files: create, append, sync, sync the directory,
read, truncate, move aside, remove, list) and ``LocalJournalFiles`` (the real thing on a local
file system: ``O_APPEND`` writes, ``fdatasync``/``fsync``, directory fsync after every name
change). ``appliance.journal.recording`` implements the same interface in memory for the
fault suites. Does not own what the bytes mean (``appliance.format.journal``).

Durability rules the writer relies on (docs/design.md §15.2): appended bytes are durable after
``sync(name)``; a created, moved or removed name after ``sync_dir()``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

from appliance.errors import JournalIOError


class JournalFiles(Protocol):
    def list(self) -> list[str]: ...

    def create(self, name: str) -> None: ...

    def append(self, name: str, data: bytes) -> None: ...

    def sync(self, name: str) -> None: ...

    def sync_dir(self) -> None: ...

    def read(self, name: str) -> bytes: ...

    def truncate(self, name: str, size: int) -> None: ...

    def set_aside(self, name: str, data: bytes, label: str) -> None: ...

    def remove(self, name: str) -> None: ...

    def close(self, name: str) -> None: ...

    def bound_retired(self, keep: int) -> None: ...


class LocalJournalFiles:
    """Segment files in ``directory`` (mode 0700: only the service's user reads or writes its journal)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self._fds: dict[str, int] = {}
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalIOError(f"cannot create the journal directory {self.dir}: {exc.strerror or exc}") from exc

    def list(self) -> list[str]:
        try:
            return sorted(p.name for p in self.dir.iterdir() if p.is_file())
        except OSError as exc:
            raise JournalIOError(f"cannot list the journal {self.dir}: {exc.strerror or exc}") from exc

    def create(self, name: str) -> None:
        self._fds[name] = self._open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)

    def append(self, name: str, data: bytes) -> None:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = self._open(name, os.O_WRONLY | os.O_APPEND)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise JournalIOError(f"cannot append to journal segment {name}: {exc.strerror or exc}") from exc

    def sync(self, name: str) -> None:
        fd = self._fds.get(name)
        try:
            if fd is None:
                fd = self._open(name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                os.fdatasync(fd)
        except OSError as exc:
            raise JournalIOError(f"cannot sync journal segment {name}: {exc.strerror or exc}") from exc

    def sync_dir(self) -> None:
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise JournalIOError(f"cannot sync the journal directory {self.dir}: {exc.strerror or exc}") from exc

    def read(self, name: str) -> bytes:
        try:
            return (self.dir / name).read_bytes()
        except OSError as exc:
            raise JournalIOError(f"cannot read journal segment {name}: {exc.strerror or exc}") from exc

    def truncate(self, name: str, size: int) -> None:
        try:
            os.truncate(self.dir / name, size)
        except OSError as exc:
            raise JournalIOError(f"cannot cut journal segment {name}: {exc.strerror or exc}") from exc
        self.sync(name)

    def set_aside(self, name: str, data: bytes, label: str) -> None:
        """Keep ``data`` (a cut tail or a retired segment) as evidence under ``retired/`` (not replayed)."""
        aside = self.dir / "retired"
        try:
            aside.mkdir(mode=0o700, exist_ok=True)
            target = aside / f"{name}.{label}"
            with open(target, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
        except OSError as exc:
            raise JournalIOError(f"cannot keep {name} aside in {aside}: {exc.strerror or exc}") from exc

    def remove(self, name: str) -> None:
        self.close(name)
        with contextlib.suppress(FileNotFoundError):
            try:
                (self.dir / name).unlink()
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise JournalIOError(f"cannot remove journal segment {name}: {exc.strerror or exc}") from exc

    def close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def bound_retired(self, keep: int) -> None:
        """Keep only the newest ``keep`` set-aside files (evidence is bounded, the disk is not)."""
        aside = self.dir / "retired"
        with contextlib.suppress(OSError):
            kept = sorted(aside.iterdir(), key=lambda p: p.stat().st_mtime_ns, reverse=True)
            for old in kept[keep:]:
                old.unlink()

    def _open(self, name: str, flags: int) -> int:
        try:
            return os.open(self.dir / name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalIOError(f"cannot open journal segment {name}: {exc.strerror or exc}") from exc
