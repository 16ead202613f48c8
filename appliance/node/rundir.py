"""The run directory: small files through which boot, service, guard and persist coordinate.

Owns: ``RunDir`` — the handoff (boot -> service), the service report (service -> everyone),
the recovery file (why nothing is served) and the boot lock. Does not own the meaning of their
contents (``appliance.format.handoff``) or any decision.

The boot lock is an ``flock`` on ``RUN/boot.lock``: a boot holds it exclusively for its whole
run; a persist holds it shared while it commits. So a boot never switches slots under a
commit, a commit never starts while a boot is choosing, and both are released by the kernel
when a process dies (power cut, ``kill -9``). Files are written with the durable-write helper
so a reader sees the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import ApplianceError, StorageError
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.handoff import Handoff, ServiceReport
from appliance.limits import DEFAULT_LIMITS
from appliance.storage import LocalStorage, write_durable

HANDOFF = "handoff.json"
REPORT = "service.json"
RECOVERY = "recovery.json"
BOOT_LOCK = "boot.lock"
RUN_DIR_MODE = 0o750  # production: 1770 appliance-boot:appliance from tmpfiles (sticky: no one replaces others' files)
LOCK_MODE = 0o600
LOCK_ACL_MASK_BITS = 0o040  # a POSIX ACL mask shows as group read (tmpfiles grants appliance-persist r)
T = TypeVar("T")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _storage(self) -> LocalStorage:
        self.path.mkdir(mode=RUN_DIR_MODE, parents=True, exist_ok=True)
        return LocalStorage(self.path)

    def _write(self, name: str, obj: dict[str, Any]) -> None:
        write_durable(self._storage(), name, canonical_bytes(obj) + b"\n")

    def _read(self, name: str) -> Any:
        """Parsed JSON of a run file; ``None`` if it is absent or unreadable."""
        try:
            data = LocalStorage(self.path).read(name, DEFAULT_LIMITS.config_max_bytes)
            return strict_loads(data, what=name, max_bytes=DEFAULT_LIMITS.config_max_bytes, max_depth=16)
        except (FileNotFoundError, ApplianceError, StorageError, OSError):
            return None

    def _remove(self, name: str) -> bool:
        try:
            (self.path / name).unlink()
        except FileNotFoundError:
            return False
        return True

    # --- handoff -------------------------------------------------------------------------

    def write_handoff(self, handoff: Handoff) -> None:
        self._write(HANDOFF, handoff.to_dict())

    def read_handoff(self) -> Handoff | None:
        return _parsed(self._read(HANDOFF), Handoff.from_dict)

    def clear_handoff(self) -> bool:
        """Remove the handoff; whether there was one (a service started before may have read it)."""
        return self._remove(HANDOFF)

    # --- service report ------------------------------------------------------------------

    def write_report(self, report: ServiceReport) -> None:
        self._write(REPORT, report.to_dict())

    def read_report(self) -> ServiceReport | None:
        return _parsed(self._read(REPORT), ServiceReport.from_dict)

    def clear_report(self) -> None:
        self._remove(REPORT)

    # --- recovery mode -------------------------------------------------------------------

    def write_recovery(self, info: dict[str, Any]) -> None:
        self._write(RECOVERY, info)

    def read_recovery(self) -> dict[str, Any] | None:
        obj = self._read(RECOVERY)
        return obj if isinstance(obj, dict) else None

    def clear_recovery(self) -> None:
        self._remove(RECOVERY)

    # --- boot lock -----------------------------------------------------------------------

    def _lock_fd(self, *, exclusive: bool) -> int:
        """The boot lock's fd. The file is 0600 and owned by the boot user (production:
        appliance-boot; tmpfiles gives appliance-persist a read ACL for the shared hold). A
        lock file someone else created is never used by a boot: it is replaced (the boot user
        owns the run directory, which is sticky), so no other user can hold the boot lock."""
        self.path.mkdir(mode=RUN_DIR_MODE, parents=True, exist_ok=True)
        path = self.path / BOOT_LOCK
        if not exclusive:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_MODE)
        st = os.fstat(fd)
        if exclusive and (st.st_uid != os.geteuid() or st.st_mode & 0o077 & ~LOCK_ACL_MASK_BITS):
            os.close(fd)
            self._remove(BOOT_LOCK)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_MODE)
        return fd

    @contextlib.contextmanager
    def boot_lock(self) -> Iterator[None]:
        """Held by a boot for its whole run; waits for an in-flight commit to finish."""
        fd = self._lock_fd(exclusive=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def commit_guard(self) -> Iterator[bool]:
        """Shared hold for a commit; yields False (and holds nothing) while a boot is running."""
        fd = self._lock_fd(exclusive=False)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def boot_running(self) -> bool:
        with self.commit_guard() as free:
            return not free


def _parsed(obj: Any, parse: Callable[[Any], T]) -> T | None:
    """``parse(obj)``, or ``None`` when the file was absent or does not parse (a reader never crashes)."""
    if obj is None:
        return None
    try:
        return parse(obj)
    except ApplianceError:
        return None
