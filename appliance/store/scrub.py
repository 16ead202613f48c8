"""Scrub and self-heal (``appliance scrub``): re-verify stored frames in resumable time slices.

Owns: one scrub slice — load the cursor, list the frames committed checkpoints name, hash
them in ``(slot, digest)`` order until the time or byte budget is spent, repair a bad frame by
copying its verified twin from the other slot (the durable-write helper replaces the bad file
atomically), mark what cannot be repaired, and save the cursor durably. Does not own the
cursor format (``appliance.format.scrub_state``), taking the writer lock (``scrub_store`` does,
the caller of ``scrub`` must), or deciding what boot does about damage (boot verifies anyway).

Guarantees: only bytes whose SHA-256 matches the signed manifest are ever written; a frame
with no verified twin is reported and left as it is, never patched (borg's zero-fill "repair"
would be silent corruption for model weights); a power cut at any point leaves every frame
either as it was or repaired, and the cursor at or before the last frame finished.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, StorageError
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.commit import SLOT_NAMES
from appliance.format.manifest import FrameRef
from appliance.format.scrub_state import MarkedFrame, Position, ScrubCursor, remaining
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.signing import TrustStore
from appliance.storage import Storage, write_durable
from appliance.store import layout
from appliance.store.discovery import open_checkpoint, scan
from appliance.store.lock import writer_lock
from appliance.store.slot import SlotReader
from appliance.store.store import Store

SAVE_EVERY = 64  # frames between durable cursor saves inside one slice


@dataclass(frozen=True)
class ScrubEvent:
    """One thing a scrub found or did; ``kind`` is one of ``EVENT_KINDS``."""

    kind: str
    detail: str
    slot: str | None = None
    digest: str | None = None
    generations: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "slot": self.slot,
            "digest": self.digest,
            "generations": list(self.generations),
        }


EVENT_KINDS = (
    "scrub.started",  # a slice began (pass number, resume position)
    "scrub.cursor_reset",  # scrub.json was unreadable: a new pass starts
    "scrub.checkpoint_unusable",  # a committed checkpoint fails its record/bundle/signature checks
    "scrub.frame_repaired",  # a bad frame was replaced by its verified twin from the other slot
    "scrub.frame_unrepairable",  # a bad frame has no verified twin: marked, never patched
    "scrub.pass_completed",  # every committed frame of both slots was visited
    "scrub.finished",  # the slice ended (budget spent or pass completed); carries the summary
)

EventSink = Callable[[ScrubEvent], None]


@dataclass
class ScrubReport:
    pass_number: int
    resumed_from: Position | None
    frames_checked: int = 0
    bytes_checked: int = 0
    frames_left: int = 0
    pass_completed: bool = False
    passes_completed: int = 0
    repaired: list[dict[str, Any]] = field(default_factory=list)
    unrepairable: list[dict[str, Any]] = field(default_factory=list)
    unusable_checkpoints: list[dict[str, Any]] = field(default_factory=list)
    marked: list[dict[str, Any]] = field(default_factory=list)  # every mark standing after this slice
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["resumed_from"] = None if self.resumed_from is None else list(self.resumed_from)
        out["seconds"] = round(self.seconds, 6)
        return out


@dataclass(frozen=True)
class _Work:
    """Every frame committed checkpoints name: (slot, digest) -> its record and generations."""

    frames: dict[Position, tuple[FrameRef, tuple[int, ...]]]
    unusable: list[dict[str, Any]]


def _collect(storage: Storage, trust: TrustStore, model: str, limits: Limits) -> _Work:
    frames: dict[Position, tuple[FrameRef, tuple[int, ...]]] = {}
    unusable: list[dict[str, Any]] = []
    for outcome in scan(storage, limits).records:
        try:
            if outcome.record is None:
                assert outcome.error is not None
                raise outcome.error
            opened = open_checkpoint(storage, outcome.record, trust, model, limits, check_frames=False)
        except (ApplianceError, StorageError) as exc:
            unusable.append({"slot": outcome.slot, "generation": outcome.generation, "problem": exc.problem})
            continue
        for ref in opened.verified.manifest.frame_index().values():
            key = (outcome.slot, ref.digest.hex)
            gens = frames[key][1] if key in frames else ()
            frames[key] = (ref, (*gens, outcome.generation))
    return _Work(frames, unusable)


def load_cursor(storage: Storage, limits: Limits = DEFAULT_LIMITS) -> tuple[ScrubCursor, str | None]:
    """The saved cursor, or a fresh one and the reason the saved one could not be used."""
    try:
        data = storage.read(layout.SCRUB_STATE, limits.config_max_bytes)
    except FileNotFoundError:
        return ScrubCursor(), None
    except (ApplianceError, StorageError) as exc:
        return ScrubCursor(), exc.problem
    try:
        obj = strict_loads(data, what="scrub.json", max_bytes=limits.config_max_bytes, max_depth=8)
        return ScrubCursor.from_dict(obj), None
    except ApplianceError as exc:
        return ScrubCursor(), exc.problem


def save_cursor(storage: Storage, cursor: ScrubCursor) -> None:
    write_durable(storage, layout.SCRUB_STATE, canonical_bytes(cursor.to_dict()) + b"\n")


class _Slice:
    """One scrub slice: budget accounting, verification, repair, marking."""

    def __init__(self, storage: Storage, cursor: ScrubCursor, sink: EventSink | None, limits: Limits) -> None:
        self.storage = storage
        self.cursor = cursor
        self.sink = sink
        self.readers = {slot: SlotReader(storage, slot, limits) for slot in SLOT_NAMES}
        self.report = ScrubReport(cursor.pass_number, cursor.position)

    def emit(self, event: ScrubEvent) -> None:
        if self.sink is not None:
            self.sink(event)

    def visit(self, position: Position, ref: FrameRef, generations: tuple[int, ...]) -> None:
        slot, digest = position
        problem = self._problem(slot, ref)
        self.report.frames_checked += 1
        self.report.bytes_checked += ref.size
        if problem is None:
            self.cursor = self.cursor.without_mark(slot, digest)
        elif self._repair(slot, ref):
            entry = {"slot": slot, "digest": digest, "problem": problem, "generations": list(generations)}
            self.report.repaired.append(entry)
            self.cursor = self.cursor.without_mark(slot, digest)
            self.emit(ScrubEvent("scrub.frame_repaired", problem, slot, digest, generations))
        else:
            mark = MarkedFrame(slot, digest, problem, generations)
            self.report.unrepairable.append(mark.to_dict())
            self.cursor = self.cursor.with_mark(mark)
            self.emit(ScrubEvent("scrub.frame_unrepairable", problem, slot, digest, generations))
        self.cursor = self.cursor.advanced(position)

    def _problem(self, slot: str, ref: FrameRef) -> str | None:
        try:
            self.readers[slot].read_frame(ref)
        except (ApplianceError, StorageError) as exc:
            return exc.problem
        return None

    def _repair(self, slot: str, ref: FrameRef) -> bool:
        """Copy the verified twin from the other slot over the bad file; check the result."""
        other = next(s for s in SLOT_NAMES if s != slot)
        try:
            data = bytes(self.readers[other].read_frame(ref))
        except (ApplianceError, StorageError, FileNotFoundError):
            return False
        with contextlib.suppress(ApplianceError, StorageError, FileNotFoundError):
            write_durable(self.storage, layout.frame_path(slot, ref.digest), data)
        return self._problem(slot, ref) is None


def scrub(
    storage: Storage,
    trust: TrustStore,
    model: str,
    *,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
    restart: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sink: EventSink | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ScrubReport:
    """Run one slice. The caller holds the writer lock (``scrub_store`` takes it)."""
    start = clock()
    cursor, reset_reason = load_cursor(storage, limits)
    if restart:
        cursor = ScrubCursor(cursor.pass_number + 1, None, cursor.passes_completed, cursor.marked)
    work = _collect(storage, trust, model, limits)
    state = _Slice(storage, cursor, sink, limits)
    state.emit(ScrubEvent("scrub.started", f"pass {cursor.pass_number}, resuming after {cursor.position}"))
    if reset_reason is not None:
        state.emit(ScrubEvent("scrub.cursor_reset", reset_reason))
    for item in work.unusable:
        state.emit(ScrubEvent("scrub.checkpoint_unusable", item["problem"], item["slot"], None, (item["generation"],)))
    state.report.unusable_checkpoints = work.unusable
    todo = remaining(sorted(work.frames), cursor.position)
    for n, position in enumerate(todo):
        if _spent(state.report, clock() - start, max_seconds, max_bytes):
            break
        state.visit(position, *work.frames[position])
        if (n + 1) % SAVE_EVERY == 0:
            save_cursor(storage, state.cursor)
    else:
        state.cursor = state.cursor.finished_pass().keep_marks(set(work.frames))
        state.report.pass_completed = True
        state.emit(ScrubEvent("scrub.pass_completed", f"pass {cursor.pass_number} visited every committed frame"))
    save_cursor(storage, state.cursor)
    return _finish(state, len(todo), clock() - start)


def _spent(report: ScrubReport, elapsed: float, max_seconds: float | None, max_bytes: int | None) -> bool:
    if report.frames_checked == 0:
        return False  # every slice makes progress
    if max_seconds is not None and elapsed >= max_seconds:
        return True
    return max_bytes is not None and report.bytes_checked >= max_bytes


def _finish(state: _Slice, todo: int, seconds: float) -> ScrubReport:
    report = state.report
    report.frames_left = todo - report.frames_checked
    report.passes_completed = state.cursor.passes_completed
    report.marked = [m.to_dict() for m in state.cursor.marked]
    report.seconds = seconds
    summary = (
        f"checked {report.frames_checked} frame(s), {report.frames_left} left in pass {report.pass_number}; "
        f"{len(report.repaired)} repaired, {len(report.marked)} marked unrepairable"
    )
    state.emit(ScrubEvent("scrub.finished", summary))
    return report


def scrub_store(
    store: Store,
    *,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
    restart: bool = False,
    sink: EventSink | None = None,
) -> ScrubReport:
    """``scrub`` on a ``Store``, under its writer lock (repairs and the cursor are writes)."""
    with writer_lock(store.lock_path):
        return scrub(
            store.storage,
            store.trust,
            store.config.model,
            max_seconds=max_seconds,
            max_bytes=max_bytes,
            restart=restart,
            sink=sink,
            limits=store.limits,
        )
