"""The persistence watchdog loop: wake on outbox events, a timer or demand; commit; ping systemd.

Owns: ``PersistDaemon`` — a ``watchdog`` observer on the outbox whose events only wake the loop
(the loop always rescans, on start and on every tick, because events are lost while the
process is down and inotify can overflow), scheduled export requests to the service, the
choice of which export to commit (the newest valid one; older ones are superseded), quarantine
of bad files and of files the serving service does not vouch for, ``WATCHDOG=1`` pings from
the loop and from commit progress, and never stopping silently: a scheduled export or a commit
that fails emits ``persist.failed`` and is retried with exponential backoff (``Backoff``).
Each pass also imports a release the fleet channel program staged in its inbox (``inbox``:
node.json ``channel_inbox``; the watchdog is the store's only writer). Does not own validating
or committing a single export (``committer``).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from appliance.errors import ApplianceError, ExportFileError, StorageError, UnauthenticExportError
from appliance.events import EventLog
from appliance.node.control_channel import ControlClient
from appliance.node.notify import sd_notify, watchdog_interval
from appliance.persist import outbox
from appliance.persist.committer import Committer
from appliance.persist.inbox import ChannelInbox
from appliance.persist.interval import persist_interval
from appliance.sources.export import remove_durably
from appliance.store.commit import CommitResult

IDLE_TICK = 5.0
SCHEDULED = "(scheduled export)"  # persist.failed ``file`` of a failed export request


class Backoff:
    """Exponential backoff after failures: ``first`` s, doubling, at most ``cap`` s; reset by a success."""

    def __init__(self, first: float = 5.0, cap: float = 300.0) -> None:
        self.first, self.cap = first, cap
        self.failures = 0
        self.until = 0.0

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = float(min(self.cap, self.first * 2.0 ** (self.failures - 1)))
        self.until = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.until = 0, 0.0

    def waiting(self, now: float) -> bool:
        return now < self.until


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.event.set()


class PersistDaemon:
    def __init__(self, committer: Committer, events: EventLog, remote_path: Path | None = None) -> None:
        self.committer = committer
        self.config = committer.config
        self.events = events
        self.outbox = Path(self.config.outbox)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.ping_every = watchdog_interval()
        self._last_ping = 0.0
        self._deferred: str | None = None
        cap = max(5.0, min(300.0, self.config.persist_interval))
        self.export_backoff = Backoff(cap=cap)
        self.commit_backoff = Backoff(cap=cap)
        self.inbox = ChannelInbox(committer, events, remote_path, Backoff(cap=cap))  # the fleet channel's hand-off

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        outbox.remove_dead_temps(self.outbox)
        observer = Observer()
        observer.schedule(_Wake(self.wake), str(self.outbox), recursive=False)
        if self.inbox.enabled and Path(self.inbox.path).is_dir():
            observer.schedule(_Wake(self.wake), self.inbox.path, recursive=False)  # head.json is written last
        observer.start()
        next_export = time.monotonic() + persist_interval(self.config)
        try:
            while not self.stop.is_set():
                self.ping(force=True)
                self.process()
                self.inbox.process(progress=lambda _: self.ping())
                if time.monotonic() >= next_export:
                    ok = self.request_export()
                    now = time.monotonic()
                    next_export = now + persist_interval(self.config) if ok else self.export_backoff.until
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
        if not found.exports or self.commit_backoff.waiting(time.monotonic()):
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
            except (ExportFileError, UnauthenticExportError) as exc:
                self._reject(path, exc)
                continue
            except (ApplianceError, StorageError) as exc:
                retry = self.commit_backoff.failed(time.monotonic())
                self.events.emit("persist.failed", file=path.name, error=type(exc).__name__, problem=exc.problem,
                                 attempt=self.commit_backoff.failures, retry_in_s=retry)  # fmt: skip
                return None  # the export stays and is retried after the backoff
            self.commit_backoff.succeeded()
            for older in exports[:i]:
                remove_durably(older)  # superseded by the state just committed (or found unchanged)
            if result is not None:
                self._journal_checkpointed(result)
            return result
        return None

    def _journal_checkpointed(self, result: CommitResult) -> None:
        """Tell the service its journal may rotate (issue 17); a failure only delays the trim."""
        body = {"slot": result.slot, "generation": result.generation}
        try:
            ControlClient(self.config.control_socket, 60.0).call("POST", "/v1/journal/checkpointed", body)
        except ApplianceError as exc:
            print(f"appliance persist: journal rotation not confirmed: {exc.problem}", file=sys.stderr)

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
        """Ask the service for an export (the scheduled persist); a failure is an event and a backoff.

        A service that is not serving (booting, recovery mode) is not a failure: there is nothing to
        persist. Anything else — the control channel refusing or unreachable, the capture failing
        (a non-finite state) — emits ``persist.failed`` and is retried with backoff.
        """
        if self.committer.not_ready() is not None:
            return True  # recovery mode, a boot, or no checkpoint proven GOOD served: nothing to persist
        try:
            status, body = request_export(self.config.control_socket)
        except ApplianceError as exc:
            return self._export_failed(type(exc).__name__, exc.problem)
        if status == 200:
            self.export_backoff.succeeded()
            return True
        if status == 503:  # not serving: nothing to export now
            return True
        detail = body.get("problem") or body.get("detail") if isinstance(body, dict) else body
        error = body.get("error", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
        return self._export_failed(str(error), str(detail)[:500])

    def _export_failed(self, error: str, problem: str) -> bool:
        retry = self.export_backoff.failed(time.monotonic())
        self.events.emit("persist.failed", file=SCHEDULED, error=error, problem=problem,
                         attempt=self.export_backoff.failures, retry_in_s=retry)  # fmt: skip
        return False


def request_export(control_socket: str, timeout: float = 300.0) -> tuple[int, object]:
    """``POST /v1/export`` on the service's control channel; ``ControlChannelError`` if unreachable."""
    return ControlClient(control_socket, timeout).call("POST", "/v1/export", {})
