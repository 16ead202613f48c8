"""The persistence watchdog loop: wake on outbox events, a timer or demand; commit; ping systemd.

Owns: ``PersistDaemon`` — a ``watchdog`` observer on the outbox whose events only wake the loop
(the loop always rescans, on start and on every tick, because events are lost while the
process is down and inotify can overflow), scheduled export requests to the service, the
choice of which export to commit (the newest valid one; older ones are superseded), quarantine
of bad files, and ``WATCHDOG=1`` pings from the loop and from commit progress.
Does not own validating or committing a single export (``committer``).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from appliance.errors import ApplianceError, ExportFileError, ServiceError, StorageError
from appliance.events import EventLog
from appliance.node import http
from appliance.node.notify import sd_notify, watchdog_interval
from appliance.persist import outbox
from appliance.persist.committer import Committer
from appliance.sources.export import remove_durably
from appliance.store.commit import CommitResult

IDLE_TICK = 5.0


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.event.set()


class PersistDaemon:
    def __init__(self, committer: Committer, events: EventLog) -> None:
        self.committer = committer
        self.config = committer.config
        self.events = events
        self.outbox = Path(self.config.outbox)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.ping_every = watchdog_interval()
        self._last_ping = 0.0
        self._deferred: str | None = None

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        outbox.remove_dead_temps(self.outbox)
        observer = Observer()
        observer.schedule(_Wake(self.wake), str(self.outbox), recursive=False)
        observer.start()
        next_export = time.monotonic() + self.config.persist_interval
        try:
            while not self.stop.is_set():
                self.ping(force=True)
                self.process()
                if time.monotonic() >= next_export:
                    self.request_export()
                    next_export = time.monotonic() + self.config.persist_interval
                self.wake.wait(self._tick(next_export))
                self.wake.clear()
        finally:
            observer.stop()
            observer.join(timeout=5)

    def _tick(self, next_export: float) -> float:
        tick = min(IDLE_TICK, max(0.05, next_export - time.monotonic()))
        return min(tick, self.ping_every) if self.ping_every else tick

    def ping(self, force: bool = False) -> None:
        """``WATCHDOG=1`` — called from the loop and from commit progress, so a hang stops the pings."""
        now = time.monotonic()
        if self.ping_every and (force or now - self._last_ping >= self.ping_every):
            sd_notify("WATCHDOG=1")
            self._last_ping = now

    # --- one pass ----------------------------------------------------------------------

    def process(self) -> CommitResult | None:
        """Commit the newest valid export (if committing is allowed now); returns what was committed."""
        found = outbox.scan(self.outbox)
        for stray in found.strays:
            self._reject(stray, ExportFileError(f"{stray.name} is not named like a state export"))
        if not found.exports:
            return None
        reason = self.committer.not_ready()
        if reason is not None:
            self._defer(reason)
            return None
        with self.committer.run.commit_guard() as free:
            if not free:
                self._defer("a boot is choosing the checkpoint to serve")
                return None
            self._deferred = None
            return self._commit_newest(found.exports)

    def _commit_newest(self, exports: list[Path]) -> CommitResult | None:
        for i in range(len(exports) - 1, -1, -1):
            path = exports[i]
            try:
                result = self.committer.commit_file(path, progress=lambda _: self.ping())
            except ExportFileError as exc:
                self._reject(path, exc)
                continue
            except (ApplianceError, StorageError) as exc:
                self.events.emit("persist.failed", file=path.name, error=type(exc).__name__, problem=exc.problem)
                return None  # the export stays and is retried on the next tick
            for older in exports[:i]:
                remove_durably(older)  # superseded by the state just committed
            return result
        return None

    def _reject(self, path: Path, exc: ApplianceError) -> None:
        try:
            moved = outbox.quarantine(path, self.outbox)
        except (OSError, StorageError) as err:
            moved = None
            print(f"appliance persist: cannot quarantine {path}: {err}", file=sys.stderr)
        self.events.emit(
            "outbox.rejected",
            file=path.name,
            error=type(exc).__name__,
            problem=exc.problem,
            quarantined=str(moved) if moved else None,
        )

    def _defer(self, reason: str) -> None:
        if reason != self._deferred:
            self.events.emit("persist.deferred", reason=reason)
            self._deferred = reason

    def request_export(self) -> bool:
        """Ask the service for an export (the scheduled persist); False if it is not serving."""
        return request_export(self.config.service_url)


def request_export(service_url: str, timeout: float = 300.0) -> bool:
    try:
        status, _ = http.call(f"{service_url}/v1/export", body={}, timeout=timeout)
    except ServiceError:
        return False
    return status == 200
