"""The model service's journal: recover (replay) at start, then record every step before its ack.

Owns: ``Journal`` — ``recover`` (read every segment, ``walk`` from the restored checkpoint's
journal point, replay the records through the service's own step function with the recorded
seed and deterministic settings, check each replayed step's recorded result, cut torn or
corrupt tails at the last good record, stop at a forged, foreign or missing record, set aside
what is not on the chain and count it, then start a new lineage that continues exactly where
replay ended; ``Recovery.summary`` is what the service reports to boot), and
the live side: ``append``/``wait`` (group commit), ``capture_point`` (rotation when a state is
captured for a checkpoint), ``checkpointed`` (remove what a durable checkpoint covers), the cap.
Does not own the record format (``appliance.format.journal``) or files (``files``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from appliance.errors import ApplianceError
from appliance.events import EventLog
from appliance.format.journal import Base, Point, Record, SegmentHeader, StepOutcome, StepPayload, outcome_aad, step_aad
from appliance.format.journal_walk import Segment, Walk, covered, walk
from appliance.journal import step as steps
from appliance.journal.files import JournalFiles
from appliance.journal.reader import read_segments
from appliance.journal.sealing import Sealing
from appliance.journal.writer import JournalWriter, LiveSegment

StepFn = Callable[[torch.Tensor, torch.Tensor], "dict[str, Any] | None"]  # the service's step, unseeded
Opener = Callable[[bytes, bytes], bytes]  # (sealed payload, associated data) -> payload
CLEAR_IN_SEALED = (
    "a clear segment in an encrypted node's journal is not replayed (anyone who read the disk can write one)"
)
KEEP_RETIRED = 64


@dataclass
class Recovery:
    """What ``recover`` did: records replayed, time, where it ended, and every cut or stop."""

    replayed: int = 0
    bytes: int = 0  # journal bytes of the replayed records
    seconds: float = 0.0
    last_index: int = 0
    cut: list[dict[str, Any]] = field(default_factory=list)
    stopped: dict[str, Any] | None = None
    retired: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    set_aside_records: int = 0  # step records moved to JOURNAL/retired/ (cut, stopped or off the chain)
    set_aside_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "bytes": self.bytes, "seconds": round(self.seconds, 6),
                "last_index": self.last_index, "cut": self.cut, "stopped": self.stopped, "retired": self.retired,
                "removed": self.removed, "set_aside_records": self.set_aside_records,
                "set_aside_bytes": self.set_aside_bytes}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """What boot shows (the service report's ``replay``): counts, where and why replay stopped."""
        return {"replayed": self.replayed, "seconds": round(self.seconds, 6), "last_index": self.last_index,
                "stopped": self.stopped, "set_aside_records": self.set_aside_records,
                "set_aside_bytes": self.set_aside_bytes, "retired_segments": len(self.retired),
                "cut": sum(1 for c in self.cut if c["kind"] == "cut")}  # fmt: skip


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Journal:
    def __init__(
        self,
        files: JournalFiles,
        key: bytes,
        events: EventLog | None,
        *,
        model: str,
        group_commit_s: float = 0.010,
        max_bytes: int = 64 << 20,
        threads: int = 1,
        sealing: Sealing | None = None,
    ) -> None:
        self.files, self.key, self.events, self.model, self.threads = files, key, events, model, threads
        self.sealing = sealing  # an encrypted store: step payloads sealed under its data key
        self.group_commit_s, self.max_bytes = group_commit_s, max_bytes
        self.writer: JournalWriter | None = None
        self.recovery: Recovery | None = None

    # --- recovery ---------------------------------------------------------------------------

    def recover(self, point: Point | None, content_sha256: str | None, generation: int, step: StepFn,
                step_counter: Callable[[], int]) -> Recovery:  # fmt: skip
        """Replay what continues the restored state, clean the directory, start the next lineage."""
        t0 = time.perf_counter()
        segments = read_segments(self.files, self.key)
        w = walk(segments, point, content_sha256)
        rec = Recovery(last_index=w.last_index)
        by_name = {s.name: s for s in segments}
        replayed_to = self._replay(w, by_name, step, step_counter, rec)
        rec.last_index = replayed_to
        rec.seconds = time.perf_counter() - t0
        chain = self._tidy(w, segments, point, replayed_to, rec)
        base_lineage = w.lineage.hex() if w.lineage is not None else (point.lineage if point else None)
        base = Base(content_sha256, base_lineage, replayed_to, generation)
        active = self.sealing.active if self.sealing is not None else None
        header = SegmentHeader(base, self.model, self.threads, _utc(), active.key_id if active else None, ahead=True)
        self.writer = JournalWriter(self.files, self.key, secrets.token_bytes(16), replayed_to + 1, header,
                                    group_commit_s=self.group_commit_s, chain=chain,
                                    seal=active.seal if active else None)  # fmt: skip
        self.recovery = rec
        self._emit_recovery(rec, generation)
        return rec

    def _replay(self, w: Walk, by_name: dict[str, Segment], step: StepFn, step_counter: Callable[[], int],
                rec: Recovery) -> int:  # fmt: skip
        """Run the walk's records; returns the index of the last one replayed (stops at a divergence)."""
        wanted = {(r.lineage, r.index) for r in w.records}
        last = w.records[0].index - 1 if w.records else w.last_index
        for name in w.used:
            seg = by_name[name]
            assert seg.header is not None
            opener, refusal = self._opener(seg.header)
            with steps.deterministic(seg.header.threads):
                for r in seg.records:
                    if (r.lineage, r.index) not in wanted:
                        continue
                    applied, problem = (False, f"record {r.index}: {refusal}") if refusal else \
                        self._replay_one(r, seg, step, step_counter, opener)  # fmt: skip
                    if problem:
                        kind = "refused" if refusal else "diverged"
                        rec.stopped = {"kind": kind, "segment": name, "index": r.index, "detail": problem}
                        self._set_aside_from(seg, r.offset, kind, rec)
                        return r.index if applied else last
                    last = r.index
                    rec.replayed += 1
                    rec.bytes += r.end - r.offset
        if w.stopped is not None:
            s = w.stopped
            rec.stopped = {"kind": s.kind, "segment": s.segment, "index": s.index, "detail": s.detail}
            if s.segment in w.used:  # else the whole segment is off the chain: _tidy sets it aside
                self._set_aside_from(by_name[s.segment], s.offset, s.kind, rec)
        for name, offset in w.cuts:
            self._set_aside_from(by_name[name], offset, "cut", rec)
        return last

    def _opener(self, header: SegmentHeader) -> tuple[Opener | None, str]:
        """How a segment's payloads open, or why none of its records may replay (design §15.1)."""
        if header.seal is None:
            if self.sealing is not None:  # the MAC key is readable off the disk: only a sealed record is authentic
                return None, CLEAR_IN_SEALED
            return None, ""
        if self.sealing is None:
            return None, f"sealed under data key {header.seal[:12]}, but the store is not encrypted"
        seal = self.sealing.opener(header.seal)
        if seal is None:
            return None, f"sealed under data key {header.seal[:12]}, which the store's keyring no longer holds"
        return seal.open, ""

    def _replay_one(self, r: Record, seg: Segment, step: StepFn, step_counter: Callable[[], int],
                    opener: Opener | None) -> tuple[bool, str]:  # fmt: skip
        """(whether the step ran, why replay must stop here: "" if it need not)."""
        try:
            payload = r.payload if opener is None else opener(r.payload, step_aad(r.lineage, r.index))
            p = StepPayload.from_bytes(payload)
            inputs, targets = steps.tensors_of(p)
            recorded = _recorded_outcome(r, seg, p, opener)
        except (ApplianceError, ValueError) as exc:
            return False, f"record {r.index} cannot be decoded: {exc}"
        before = step_counter()
        if before != p.step_before:
            return False, f"record {r.index} expects step {p.step_before} before it, the state is at {before}"
        with steps.seeded(p.seed):
            try:
                result = step(inputs, targets)
            except Exception as exc:
                return True, _raised(r.index, type(exc).__name__, recorded)
        if recorded is None:  # written ahead, its outcome lost with the cut: the last step, run unchecked
            return True, ""
        if recorded.error is not None or dict(result or {}) != dict(recorded.result or {}):
            shown = f"raised {recorded.error}" if recorded.error else str(dict(recorded.result or {}))
            return True, f"record {r.index} replayed to {result}, recorded {shown}: not deterministic"
        return True, ""

    def _set_aside_from(self, seg: Segment, offset: int, label: str, rec: Recovery) -> None:
        data = self.files.read(seg.name)
        if offset >= len(data):
            return
        self.files.set_aside(seg.name, data[offset:], f"{label}-at-{offset}")
        self.files.truncate(seg.name, offset)
        rec.cut.append({"segment": seg.name, "offset": offset, "bytes": len(data) - offset, "kind": label})
        rec.set_aside_records += sum(1 for r in seg.records if r.offset >= offset)
        rec.set_aside_bytes += len(data) - offset

    def _tidy(self, w: Walk, segments: list[Segment], point: Point | None, last: int, rec: Recovery
              ) -> list[LiveSegment]:  # fmt: skip
        """Remove what the restored checkpoint covers, set aside what is not on the chain; the live chain."""
        used = set(w.used)
        chain: list[LiveSegment] = []
        for seg in sorted(segments, key=lambda s: (s.first_index, s.name)):
            if seg.name in used:
                kept = [r for r in seg.records if r.index <= last or r.lineage != seg.lineage]
                end = kept[-1].end if kept else (seg.records[0].offset if seg.records else seg.size)
                chain.append(LiveSegment(seg.name, seg.lineage, seg.first_index,
                                         kept[-1].index if kept else seg.first_index - 1, end))  # fmt: skip
                continue
            if not covered(seg, point):
                data = self.files.read(seg.name)
                self.files.set_aside(seg.name, data, "retired")
                rec.retired.append(seg.name)
                rec.set_aside_records += len(seg.records)
                rec.set_aside_bytes += len(data)
            else:
                rec.removed.append(seg.name)
            self.files.remove(seg.name)
        self.files.sync_dir()
        self._bound_retired()
        return chain

    def _bound_retired(self) -> None:
        self.files.bound_retired(KEEP_RETIRED)

    def _emit_recovery(self, rec: Recovery, generation: int) -> None:
        if self.events is None:
            return
        for cut in rec.cut:
            if cut["kind"] == "cut":
                self.events.emit("journal.cut", segment=cut["segment"], offset=cut["offset"], bytes=cut["bytes"])
        if rec.stopped is not None:
            self.events.emit("journal.stopped", generation=generation, **rec.stopped)
        self.events.emit("journal.replayed", generation=generation, records=rec.replayed, bytes=rec.bytes,
                         seconds=round(rec.seconds, 6), last_index=rec.last_index,
                         retired=len(rec.retired), removed=len(rec.removed),
                         set_aside_records=rec.set_aside_records)  # fmt: skip

    # --- the live side ----------------------------------------------------------------------------

    def _live(self) -> JournalWriter:
        if self.writer is None:
            raise RuntimeError("the journal is not recovered yet")
        return self.writer

    def append(self, p: StepPayload) -> int:
        return self._live().append(p.to_bytes())

    def record_step(self, seed: int, before: int, x: torch.Tensor, y: torch.Tensor,
                    run: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """One written-ahead step (J1): append its record, run it, append its outcome; (index, result).

        The caller holds the model lock (record order = application order) and runs ``run`` seeded
        and deterministic; it acknowledges only after ``wait(index)``, outside the lock (J2). The
        record's fsync starts as soon as it is appended, so it overlaps the step. A step that raises
        is recorded as having raised (replay raises the same way and goes on) and re-raised.
        """
        w = self._live()
        index = w.append(steps.payload(seed, before, x, y, {}).to_bytes())
        try:
            result = run()
        except Exception as exc:
            w.append_outcome(index, StepOutcome(error=type(exc).__name__).to_bytes())
            raise
        w.append_outcome(index, StepOutcome(result=result).to_bytes())
        return index, result

    def wait(self, index: int) -> None:
        self._live().wait(index)

    def capture_point(self) -> Point:
        """Called with the state captured (under the model lock): its point; later steps go to a new segment."""
        w = self._live()
        point = w.point
        if w.current.last >= w.current.first:
            w.rotate()
        return point

    def checkpointed(self, point: Point) -> list[str]:
        removed = self._live().checkpointed(point)
        if removed and self.events is not None:
            self.events.emit("journal.rotated", lineage=point.lineage, index=point.index, removed=len(removed),
                             bytes_left=self.total_bytes)  # fmt: skip
        return removed

    @property
    def total_bytes(self) -> int:
        return self.writer.total_bytes if self.writer else 0

    @property
    def over_cap(self) -> bool:
        return self.total_bytes >= self.max_bytes

    @property
    def full(self) -> bool:
        return self.total_bytes >= 2 * self.max_bytes

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _recorded_outcome(r: Record, seg: Segment, p: StepPayload, opener: Opener | None) -> StepOutcome | None:
    """What the step did live: its own record's result (versions 1, 2), its outcome record (3), or None."""
    if seg.header is None or not seg.header.ahead:
        return StepOutcome(result=p.result)
    o = seg.outcomes.get(r.index)
    if o is None:
        return None
    return StepOutcome.from_bytes(o.payload if opener is None else opener(o.payload, outcome_aad(r.lineage, r.index)))


def _raised(index: int, error: str, recorded: StepOutcome | None) -> str:
    """Why replay stops at a step that raised ("" when it raised live too: state as it left it)."""
    if recorded is None or recorded.error == error:
        return ""
    return f"record {index} raised {error} on replay, recorded {recorded.error or 'success'}: not deterministic"
