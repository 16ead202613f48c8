"""The raw state of the last checkpoint a long-lived committer wrote, kept for its next commit.

Owns: ``LastCommit`` — what the persistence watchdog remembers between two of its own commits:
for every frame position (tensor or asset key, frame index) the frame record it committed and
the raw bytes that record decodes to, plus which checkpoint (slot, manifest digest) that was.
With it the next commit into the same slot neither re-reads nor re-verifies nor decodes its
parent: an unchanged frame is recognised by comparing bytes (before any hashing) and
referenced as is, and a changed frame is XOR-ed against the remembered raw bytes
(docs/design.md §4.4, docs/performance.md §4). Does not own the per-frame decision
(``encode``) or the write order (``commit``).

Why this keeps the commit's guarantees (W3, design §6): the remembered checkpoint is the one
this process committed into the target slot, so every frame it names was written there
(temp -> fsync -> rename) or hashed there by that commit; the new commit only uses the
memory when the parent ``commit`` selects — signature and record verified, frames present —
is that very checkpoint in that very slot, and still checks that every frame the new
manifest names is present before it signs. What it gives up is only the *re*-verification of
frames this process verified itself minutes earlier; a frame rotting in between is caught, as
for any committed frame, by boot's per-frame SHA-256 (then the other slot) and by scrub.

The sources must hand out private buffers that nobody modifies afterwards (state exports
read with ``pread`` are); the memory keeps references to those buffers, not copies.

Buffers: fresh memory costs a page fault per page on first touch (on this VM up to ~2 ns per
byte, more than hashing it), so the watchdog reads each export into buffers it recycles
(``take``): the buffers of the state before the parent, free again once a newer state is
installed. Peak memory is about two states (the remembered parent and the export being
committed). Buffers lent for an export that was not committed are dropped (``discard_lent``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from appliance.codec.transform import U8
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef

DEFAULT_LIMIT = 8 << 30  # bytes of raw state kept at most (more: the next commit reads its parent as before)
_CHUNK = 1 << 18  # bytes compared at a time: a changed frame usually differs within the first chunk

Position = tuple[str, int]  # (tensor name or asset key, frame index)


@dataclass(frozen=True)
class Remembered:
    ref: FrameRef
    dtype: str
    raw: U8  # the raw bytes ``ref`` decodes to


def same_bytes(a: U8, b: U8) -> bool:
    """``a == b`` byte for byte, ~0.04 ns/byte, stopping at the first differing 256 KiB chunk."""
    if a.size != b.size:
        return False
    words = a.size // 8 * 8
    for off in range(0, words, _CHUNK):
        end = min(off + _CHUNK, words)
        if not np.array_equal(a[off:end].view(np.uint64), b[off:end].view(np.uint64)):
            return False
    return bool(np.array_equal(a[words:], b[words:]))


class Recording:
    """Frames of the commit in progress, in the order they are placed; installed only after it commits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: dict[Position, Remembered] = {}
        self.bytes = 0
        self.overflowed = False

    def add(self, position: Position, ref: FrameRef, dtype: str, raw: U8) -> None:
        if self.overflowed:
            return
        self.bytes += raw.size
        if self.bytes > self.limit:
            self.overflowed, self.frames = True, {}
            return
        self.frames[position] = Remembered(ref, dtype, raw)


class LastCommit:
    """Remembers one checkpoint: ``(slot, manifest digest) -> {position: Remembered}``.

    ``limit``: most raw bytes kept (0: remember nothing). Not thread-safe: one committer uses it.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.slot: str | None = None
        self.manifest_digest: Digest | None = None
        self.frames: Mapping[Position, Remembered] = {}
        self._free: dict[int, list[U8]] = {}  # size -> buffers nobody uses
        self._held: list[U8] = []  # buffers of the remembered state
        self._lent: list[U8] = []  # buffers handed out since the last install

    def take(self, size: int) -> U8:
        """A private buffer of ``size`` bytes for the next export, recycled when one is free."""
        free = self._free.get(size)
        buf = free.pop() if free else np.empty(size, dtype=np.uint8)
        self._lent.append(buf)
        return buf

    def discard_lent(self) -> None:
        """The export read into the lent buffers was not committed: they become free again."""
        for buf in self._lent:
            self._free.setdefault(buf.size, []).append(buf)
        self._lent = []

    def for_parent(self, slot: str, manifest_digest: Digest, target: str) -> Mapping[Position, Remembered] | None:
        """The remembered frames if they describe ``manifest_digest`` in ``slot`` and the commit writes there."""
        if self.manifest_digest is None or not self.frames:
            return None
        if slot != self.slot or target != slot or manifest_digest != self.manifest_digest:
            return None
        return self.frames

    def recording(self) -> Recording | None:
        return Recording(self.limit) if self.limit > 0 else None

    def install(self, recording: Recording | None, slot: str, manifest_digest: Digest) -> None:
        """The commit of ``recording`` is durable: remember it (or forget everything if it did not fit)."""
        if recording is None or recording.overflowed:
            self.forget()
            return
        self.slot, self.manifest_digest, self.frames = slot, manifest_digest, recording.frames
        # the replaced state's buffers are free now: the commit that used them as its parent is done
        self._free = {}
        for buf in self._held:
            self._free.setdefault(buf.size, []).append(buf)
        self._held, self._lent = self._lent, []

    def forget(self) -> None:
        """Remember nothing; buffers are dropped, not recycled (a failed commit's workers may still hold them)."""
        self.slot, self.manifest_digest, self.frames = None, None, {}
        self._free, self._held, self._lent = {}, [], []

    @property
    def raw_bytes(self) -> int:
        return sum(r.raw.size for r in self.frames.values())
