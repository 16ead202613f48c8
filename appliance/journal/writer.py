"""Appending journal records with group commit: every step durable before it is acknowledged.

Owns: ``JournalWriter`` — the current segment of one lineage, ``append`` (encode + write; the
caller orders appends, the model service under its model lock), ``wait`` (block until the
record is fsynced), ``append_outcome`` (a written-ahead step's result, durable with the next sync,
never waited for), the flusher thread that syncs pending records in groups (a lone record is
synced at once; records arriving while a sync runs, or several pending together, form a group
whose first record waits at most ``group_commit_s`` plus one ``fdatasync``), ``rotate`` (sync the
current segment, then start the next with its header durable before any record in it is
acknowledged) and the chain of live segments that ``checkpointed`` trims.
Does not own the record format (``appliance.format.journal``) or recovery (``journal``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import JournalIOError
from appliance.format.journal import (
    KIND_HEADER,
    KIND_OUTCOME,
    KIND_STEP,
    Point,
    SegmentHeader,
    encode_record,
    outcome_aad,
    segment_name,
    step_aad,
)
from appliance.journal.files import JournalFiles


@dataclass
class LiveSegment:
    name: str
    lineage: bytes
    first: int  # first step index the segment may hold
    last: int  # last step index written into it (first - 1 while empty)
    size: int


class JournalWriter:
    def __init__(
        self,
        files: JournalFiles,
        key: bytes,
        lineage: bytes,
        next_index: int,
        header: SegmentHeader,
        *,
        group_commit_s: float = 0.010,
        chain: list[LiveSegment] | None = None,
        clock: Callable[[], float] = time.monotonic,
        seal: Callable[[bytes, bytes], bytes] | None = None,
    ) -> None:
        self.files, self.key, self.lineage, self.seal = files, key, lineage, seal
        self.header, self.group_commit_s, self.clock = header, group_commit_s, clock
        self.chain: list[LiveSegment] = list(chain or [])
        self._next = next_index
        self._synced = next_index - 1
        self._pending_since: float | None = None
        self._dirty = False  # bytes appended that no step waits for (outcome records) and not yet synced
        self._error: JournalIOError | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._io = threading.Lock()  # a sync never runs on a segment that rotate() is closing
        self.syncs = 0
        self._start_segment()
        self._thread = threading.Thread(target=self._flusher, name="journal-flush", daemon=True)
        self._thread.start()

    # --- appending -------------------------------------------------------------------------

    @property
    def current(self) -> LiveSegment:
        return self.chain[-1]

    @property
    def point(self) -> Point:
        """The last record appended (the journal point a state captured now includes)."""
        return Point(self.lineage.hex(), self._next - 1)

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.chain)

    def append(self, payload: bytes) -> int:
        """Write one step record (not yet durable); returns its index. Callers serialise appends."""
        index = self._next
        size = self._write(KIND_STEP, index, payload, step_aad)
        with self._cond:
            self._next = index + 1
            self.current.last, self.current.size = index, self.current.size + size
            if self._pending_since is None:
                self._pending_since = self.clock()
            self._cond.notify_all()
        return index

    def append_outcome(self, index: int, payload: bytes) -> None:
        """Write step ``index``'s outcome record right after its step record (version 3; not waited for).

        It becomes durable with the next sync (the next step's, a rotation's or the close's): a cut
        before that loses only the outcome, and replay then runs that last step unchecked.
        """
        size = self._write(KIND_OUTCOME, index, payload, outcome_aad)
        with self._cond:
            self.current.size += size
            self._dirty = True

    def _write(self, kind: int, index: int, payload: bytes, aad: Callable[[bytes, int], bytes]) -> int:
        """Seal (an encrypted store's segment, design §15.1), encode and append one record; its size."""
        self._raise_if_broken()
        if self.seal is not None:
            payload = self.seal(payload, aad(self.lineage, index))
        data = encode_record(self.key, kind, self.lineage, index, payload)
        try:
            self.files.append(self.current.name, data)
        except JournalIOError as exc:
            self._broken(exc)
            raise
        return len(data)

    def wait(self, index: int, timeout: float | None = 30.0) -> None:
        """Return once record ``index`` is durable; ``JournalIOError`` if it cannot become so."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._synced >= index or self._error is not None, timeout):
                raise JournalIOError(f"journal record {index} was not synced within {timeout}s")
            if self._synced < index and self._error is not None:
                raise self._error

    def flush(self) -> None:
        """Make everything appended so far durable now (used before rotation and at shutdown)."""
        with self._io:
            self._sync_current()

    def rotate(self, header: SegmentHeader | None = None) -> None:
        """End the current segment (synced) and start the next one; callers serialise with ``append``."""
        self._raise_if_broken()
        with self._io:
            self._sync_current()
            self.files.close(self.current.name)
            if header is not None:
                self.header = header
            self._start_segment()

    def checkpointed(self, point: Point) -> list[str]:
        """Remove the segments a durable checkpoint at ``point`` covers; returns their names.

        A segment is covered when every record in it is at or before ``point`` on the chain: the
        segments before the one holding ``point``, and that one too if ``point`` is its last record.
        The current segment is never removed.
        """
        lineage = bytes.fromhex(point.lineage)
        if all(s.lineage != lineage for s in self.chain):
            return []
        upto = 0
        for i, seg in enumerate(self.chain[:-1]):  # the current segment stays
            if seg.lineage == lineage and seg.last > point.index:
                break
            if seg.lineage != lineage and any(s.lineage == lineage for s in self.chain[:i]):
                break  # past the point's lineage on the chain
            upto = i + 1
        removed = [s.name for s in self.chain[:upto]]
        for name in removed:
            self.files.remove(name)
        if removed:
            self.files.sync_dir()
        del self.chain[:upto]
        return removed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        if self._error is None:
            with contextlib.suppress(JournalIOError):
                self.flush()
        self.files.close(self.current.name)

    # --- inside --------------------------------------------------------------------------------

    def _start_segment(self) -> None:
        name = segment_name(self._next, self.lineage)
        data = encode_record(self.key, KIND_HEADER, self.lineage, self._next, self.header.to_bytes())
        self.files.create(name)
        self.files.append(name, data)
        self.files.sync(name)
        self.files.sync_dir()  # the segment's name is durable before any record in it is acknowledged
        self.chain.append(LiveSegment(name, self.lineage, self._next, self._next - 1, len(data)))

    def _sync_current(self) -> None:
        with self._cond:
            target, dirty, self._dirty = self._next - 1, self._dirty, False
        if target <= self._synced and not dirty:
            return
        try:
            self.files.sync(self.current.name)
        except JournalIOError as exc:
            self._broken(exc)
            raise
        self.syncs += 1
        with self._cond:
            self._synced = max(self._synced, target)
            self._pending_since = None if self._next - 1 <= self._synced else self.clock()
            self._cond.notify_all()

    def _flusher(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._next - 1 > self._synced)
                if self._closed or self._error is not None:
                    return
                since = self._pending_since or self.clock()
                concurrent = self._next - 1 - self._synced >= 2
            # A lone record is synced at once (its latency is one fsync); when several clients are
            # appending, the group waits up to group_commit_s from its first record to share one sync.
            delay = since + self.group_commit_s - self.clock() if concurrent else 0.0
            if delay > 0:
                time.sleep(delay)
            try:
                with self._io:
                    self._sync_current()
            except JournalIOError:
                return

    def _broken(self, exc: JournalIOError) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise JournalIOError(f"the journal stopped accepting steps: {self._error.problem}")
