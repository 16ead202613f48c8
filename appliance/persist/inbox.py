"""The persistence watchdog's half of the fleet channel: import what the channel program staged.

Owns: ``ChannelInbox`` — on every pass of the watchdog loop, when node.json names a
``channel_inbox`` and a head is staged there, import the release it names through
``appliance.remote.inbox.import_staged`` (everything checked again: the inbox is written by
``appliance-channel``, whom nothing here trusts), as the store's only writer, under the writer lock
and never while a boot chooses the checkpoint to serve. Before reading the inbox it checks the inbox
itself (``inbox_guard.check_inbox``: owner, mode, no symbolic link followed; the head is read through
``inbox_guard.read_head``, judged the same way first), and it refuses a head
older than the newest it imported from the channel (``inbox_guard.ImportedHeads``, raised after
each import). The channel's name and legacy key pin come from ``remote.json`` beside node.json
(read-only configuration; its credentials are never read here). Outcomes are events:
``remote.restored`` (imported into the inactive slot; ``appliance boot`` serves it through the
canary), ``channel.import_failed`` (retried with backoff; a damaged or incomplete staging has the remedy
``restage_remedy``: the channel program repairs it and hands it off again, which this retries at once —
a hand-off is the head's digest and its file's identity) and ``channel.import_refused`` (a release
refused is remembered until the channel stages another head, an inbox refused for its owner or mode
is checked again on every pass and reported once per problem), each with the error's remedy; and
the outcome ``process`` returns (``appliance persist --once`` prints it). Nothing here stops
persistence of local state. Rules: ``appliance.format.inbox``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError, InboxPermissionError, StorageError, UnsafePathError
from appliance.events import EventLog
from appliance.format.digest import Digest
from appliance.format.inbox import damaged_staging, restage_remedy, retry_import
from appliance.persist.committer import Committer
from appliance.persist.inbox_guard import ImportedHeads, check_inbox, owners_for, read_head

if TYPE_CHECKING:
    from appliance.persist.daemon import Backoff
    from appliance.storage import LocalStorage

NOTHING: dict[str, Any] = {"status": "none"}  # no inbox, nothing staged, or the staged head already handled


class ChannelInbox:
    def __init__(self, committer: Committer, events: EventLog, remote_path: Path | None, backoff: Backoff) -> None:
        self.committer, self.events, self.remote_path = committer, events, remote_path
        self.path = committer.config.channel_inbox
        self.owners = owners_for(committer.config.channel_user)
        self.backoff = backoff  # daemon.Backoff: first retry after 5 s, doubling
        self.settled: set[str] = set()  # hand-offs (head digest @ file identity) imported or refused: not tried again
        self.attempted: str | None = None  # the hand-off the backoff counts for (a new one is tried at once)
        self.unsafe: str | None = None  # the inbox's owner/mode problem last reported (one event per problem)

    @property
    def enabled(self) -> bool:
        """node.json names an inbox (production: the channel program runs as its own user) and the daemon
        knows where remote.json is."""
        return bool(self.path) and self.remote_path is not None

    def process(self, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """One look at the inbox; returns its outcome: ``status`` none, waiting, deferred, imported, already
        (the store held it), refused or failed (with ``error``, ``exit_code``, ``problem``, ``remedy``)."""
        found = self._look() if self.enabled else NOTHING
        if isinstance(found, dict):
            return found
        inbox, data, digest = found
        if self.backoff.waiting(time.monotonic()):
            return {"status": "waiting", "retry_in_s": round(self.backoff.until - time.monotonic(), 1)}
        with self.committer.run.commit_guard() as free:
            if not free:
                return {"status": "deferred", "reason": "a boot is choosing the checkpoint to serve"}
            checked = self._check(deep=True)  # everything staged, just before it is read
            return checked if checked is not None else self._import(inbox, data, digest, progress)

    def _look(self) -> tuple[LocalStorage, bytes, str] | dict[str, Any]:
        """The inbox, the head staged there and its digest; an outcome when there is nothing to import."""
        checked = self._check(deep=False)
        if checked is not None:
            return checked
        staged = self._staged()
        if isinstance(staged, dict):
            return staged
        inbox, data, identity = staged
        digest = f"{Digest.of(data).hex}@{identity}"  # the channel program re-stages: a new hand-off, same bytes
        if digest in self.settled:
            return NOTHING
        if digest != self.attempted:
            self.attempted = digest
            self.backoff.succeeded()  # a new hand-off: no backoff from the previous one
        return inbox, data, digest

    def _check(self, *, deep: bool) -> dict[str, Any] | None:
        """The inbox's owner and mode (``deep``: and of everything in it); an outcome unless it is sound."""
        try:
            if check_inbox(self.path, self.owners, deep=deep):
                return None
        except InboxPermissionError as exc:
            return self._unsafe(exc)
        except OSError as exc:  # an unreadable inbox never stops persistence
            return self._failed(exc)
        self.unsafe = None
        return NOTHING  # no inbox (yet)

    def _staged(self) -> tuple[LocalStorage, bytes, str] | dict[str, Any]:
        """The inbox, the head staged there and its file's identity; an outcome when none is (or the inbox cannot
        be read: an event). The head is judged like every staged file before it is read (``read_head``)."""
        from appliance.remote.inbox import open_inbox

        try:
            inbox = open_inbox(self.path)
            head = read_head(self.path, self.owners) if inbox is not None else None
        except InboxPermissionError as exc:
            return self._unsafe(exc)
        except (ApplianceError, OSError) as exc:  # an unreadable inbox never stops persistence
            return self._failed(exc) if not self.backoff.waiting(time.monotonic()) else NOTHING
        if inbox is None or head is None:
            self.unsafe = None  # nothing staged in a sound inbox
            return NOTHING
        return inbox, *head

    def _import(
        self, inbox: LocalStorage, data: bytes, digest: str, progress: Callable[[int], None] | None
    ) -> dict[str, Any]:
        from appliance.remote.config import load_remote
        from appliance.remote.inbox import import_staged
        from appliance.signing import PublicKey

        try:
            assert self.remote_path is not None
            remote = load_remote(self.remote_path)
            pinned = [PublicKey.load(p) for p in remote.channel_trust]
            memory = ImportedHeads(self.committer.store.storage)
            prefix = remote.channel_prefix()
            head, result = import_staged(
                self.committer.store, inbox, data, channel=remote.channel, floor=self.committer.current_floor(),
                last_seen=memory.seen(prefix), pinned=pinned, progress=progress,
            )  # fmt: skip
            memory.raise_seen(prefix, head.sequence)  # a head older than this one is refused from now on
        except UnsafePathError as exc:  # a staged file swapped for a link or special file after the check
            checked = self._check(deep=True)
            return checked if checked is not None else self._failed(exc)
        except (ApplianceError, OSError) as exc:  # never stops persistence: an event, then backoff or settled
            if not isinstance(exc, ApplianceError) or retry_import(exc):
                return self._failed(exc)
            self.settled.add(digest)
            return self._refused(exc)
        self.settled.add(digest)
        self.backoff.succeeded()
        info = {"channel": remote.channel, "sequence": head.sequence, "imported": not result.already,
                **result.to_dict()}  # fmt: skip
        if not result.already:
            self.events.emit("remote.restored", site=prefix, **info)
        return {"status": "imported" if not result.already else "already", **info}

    def _unsafe(self, exc: InboxPermissionError) -> dict[str, Any]:
        """The inbox is refused for its owner, mode or contents: checked again every pass, reported once."""
        if exc.problem != self.unsafe:
            self.unsafe = exc.problem
            self._refused(exc)
        return _outcome("refused", exc, inbox=str(self.path))

    def _refused(self, exc: ApplianceError) -> dict[str, Any]:
        outcome = _outcome("refused", exc, inbox=str(self.path))
        self.events.emit("channel.import_refused", **{k: v for k, v in outcome.items() if k != "status"})
        return outcome

    def _failed(self, exc: ApplianceError | OSError) -> dict[str, Any]:
        delay = self.backoff.failed(time.monotonic())
        if not isinstance(exc, ApplianceError):
            exc = StorageError(f"channel inbox {self.path}: {exc}", remedy="check the inbox's file system; retried")
        elif damaged_staging(exc):  # not the export's wording: an inbox is repaired by the channel program
            exc = type(exc)(exc.problem, remedy=restage_remedy(str(self.path)))
        outcome = _outcome("failed", exc, inbox=str(self.path), attempt=self.backoff.failures, retry_in_s=delay)
        self.events.emit("channel.import_failed", **{k: v for k, v in outcome.items() if k != "status"})
        return outcome


def _outcome(status: str, exc: ApplianceError, **extra: Any) -> dict[str, Any]:
    return {"status": status, "error": type(exc).__name__, "exit_code": exc.exit_code, "problem": exc.problem,
            "remedy": exc.remedy, **extra}  # fmt: skip
