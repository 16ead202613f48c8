"""The persistence watchdog's half of the fleet channel: import what the channel program staged.

Owns: ``ChannelInbox`` — on every pass of the watchdog loop, when node.json names a
``channel_inbox`` and a head is staged there, import the release it names through
``appliance.remote.inbox.import_staged`` (everything checked again: the inbox is written by
``appliance-channel``, whom nothing here trusts), as the store's only writer, under the writer lock
and never while a boot chooses the checkpoint to serve. The channel's name and legacy key pin
come from ``remote.json`` beside node.json (read-only configuration; its credentials are never
read here). Outcomes are events: ``remote.restored`` (imported into the inactive slot; ``appliance
boot`` serves it through the canary), ``channel.import_failed`` (retried with backoff) and
``channel.import_refused`` (remembered until the channel stages another head, so a refused
release costs one event, not one per pass). Rules: ``appliance.format.inbox``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError
from appliance.events import EventLog
from appliance.format.digest import Digest
from appliance.format.inbox import retry_import
from appliance.persist.committer import Committer

if TYPE_CHECKING:
    from appliance.persist.daemon import Backoff
    from appliance.storage import LocalStorage


class ChannelInbox:
    def __init__(self, committer: Committer, events: EventLog, remote_path: Path | None, backoff: Backoff) -> None:
        self.committer, self.events, self.remote_path = committer, events, remote_path
        self.path = committer.config.channel_inbox
        self.backoff = backoff  # daemon.Backoff: first retry after 5 s, doubling
        self.settled: set[str] = set()  # head digests imported or refused: not tried again
        self.attempted: str | None = None  # the head digest the backoff counts for

    @property
    def enabled(self) -> bool:
        """node.json names an inbox (production: the channel program runs as its own user) and the daemon
        knows where remote.json is."""
        return bool(self.path) and self.remote_path is not None

    def process(self, progress: Callable[[int], None] | None = None) -> dict[str, Any] | None:
        """One look at the inbox; returns what was imported (``None``: nothing staged, waiting or failed)."""
        staged = self._staged() if self.enabled else None
        if staged is None:
            return None
        inbox, data = staged
        digest = Digest.of(data).hex
        if digest in self.settled:
            return None
        if digest != self.attempted:
            self.attempted = digest
            self.backoff.succeeded()  # a new head: no backoff from the previous one
        if self.backoff.waiting(time.monotonic()):
            return None
        with self.committer.run.commit_guard() as free:
            if not free:
                return None  # a boot is choosing: imported on a later pass
            return self._import(inbox, data, digest, progress)

    def _staged(self) -> tuple[LocalStorage, bytes] | None:
        """The inbox and the head staged there; ``None`` when none is (or the inbox cannot be read: an event)."""
        from appliance.remote.inbox import open_inbox, read_staged_head

        try:
            inbox = open_inbox(self.path)
            data = read_staged_head(inbox) if inbox is not None else None
        except (ApplianceError, OSError) as exc:  # an unreadable inbox never stops persistence
            if not self.backoff.waiting(time.monotonic()):
                delay = self.backoff.failed(time.monotonic())
                problem = exc.problem if isinstance(exc, ApplianceError) else str(exc)
                self.events.emit("channel.import_failed", error=type(exc).__name__, problem=problem,
                                 attempt=self.backoff.failures, retry_in_s=delay, inbox=str(self.path))  # fmt: skip
            return None
        return (inbox, data) if inbox is not None and data is not None else None

    def _import(
        self, inbox: LocalStorage, data: bytes, digest: str, progress: Callable[[int], None] | None
    ) -> dict[str, Any] | None:
        from appliance.remote.config import load_remote
        from appliance.remote.inbox import import_staged
        from appliance.signing import PublicKey

        try:
            assert self.remote_path is not None
            remote = load_remote(self.remote_path)
            pinned = [PublicKey.load(p) for p in remote.channel_trust]
            head, result = import_staged(
                self.committer.store, inbox, data, channel=remote.channel, floor=self.committer.current_floor(),
                pinned=pinned, progress=progress,
            )  # fmt: skip
        except (ApplianceError, OSError) as exc:  # never stops persistence: an event, then backoff or settled
            if not isinstance(exc, ApplianceError) or retry_import(exc):
                delay = self.backoff.failed(time.monotonic())
                problem = exc.problem if isinstance(exc, ApplianceError) else str(exc)
                self.events.emit("channel.import_failed", error=type(exc).__name__, problem=problem,
                                 attempt=self.backoff.failures, retry_in_s=delay, inbox=str(self.path))  # fmt: skip
            else:
                self.settled.add(digest)
                self.events.emit("channel.import_refused", error=type(exc).__name__, problem=exc.problem,
                                 inbox=str(self.path))  # fmt: skip
            return None
        self.settled.add(digest)
        self.backoff.succeeded()
        info = {"channel": remote.channel, "sequence": head.sequence, "imported": not result.already,
                **result.to_dict()}  # fmt: skip
        if not result.already:
            self.events.emit("remote.restored", site=remote.channel_prefix(), **info)
        return info
