"""Which adaptation journal records replay: the walk over the segments found on disk (docs/design.md §15.3).

Owns: ``Segment`` (a segment as read: header, good records, outcomes, why reading stopped),
``walk`` — from the journal point a restored checkpoint names, or the root lineage that
continues its content, the chain of records that replays, in order, and where and why it
stops — ``covered`` (segments a start state holds), ``summary`` (what a replay from a start
does, for ``appliance journal check``) and ``root_digest`` (where a check starts when no
checkpoint names a start).
Pure: no I/O, no torch. The service's replay (``appliance.journal.journal``) and
``appliance journal check`` apply these same rules, so the check says where boot's replay stops.

Why a walk stops (R3), each an ``Issue`` in ``Walk.stopped``:

* **forged**: a record fails its MAC (written without the journal key);
* **foreign**: a whole, authentic record that does not belong where it is (another lineage's,
  an index the walk already passed, a header or an outcome out of place);
* **gap**: an index is missing — a step record (or a whole segment) was removed — or, in a
  version 3 segment, a step record is followed directly by the next step record without its
  outcome record in between (the writer appends them in that order under one lock: only the
  last record of a segment, where a crash or a cut ended it, may lack its outcome).

Torn and corrupt records are cuts, not stops: the segment is cut there, and the walk goes on
only where a later segment continues exactly (else the next segment is a gap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.format.journal import Bad, Point, Record, SegmentHeader

STOP_KINDS = ("forged", "foreign", "gap")  # replay stops; the rest is set aside (R3)


@dataclass(frozen=True)
class Segment:
    """A segment as read from disk: its header, its good records, and why reading stopped early."""

    name: str
    lineage: bytes
    first_index: int
    header: SegmentHeader | None
    records: tuple[Record, ...]  # step records in file order, all MAC-verified
    stop: Bad | None  # None: the file ended cleanly
    size: int
    outcomes: Mapping[int, Record] = field(default_factory=dict)  # version 3: step index -> its outcome record


@dataclass(frozen=True)
class Issue:
    kind: str  # torn | corrupt | forged | foreign | gap | header
    segment: str
    index: int  # the first index that did not replay
    offset: int  # where in the segment (0: the whole segment)
    detail: str


@dataclass(frozen=True)
class Walk:
    """The records to replay, in order, and what ended the walk."""

    records: tuple[Record, ...]
    used: tuple[str, ...]  # segment names on the walked chain
    issues: tuple[Issue, ...]
    stopped: Issue | None  # forged / foreign / gap: replay stops here and says so
    last_index: int  # index of the last record replayed (the start point if none)
    lineage: bytes | None  # the lineage the walk ended in (None: none found)
    cuts: tuple[tuple[str, int], ...]  # (segment, offset): bytes from here on are cut off (torn/corrupt tails)


def walk(segments: Sequence[Segment], start: Point | None, content_sha256: str | None) -> Walk:
    """The chain of records that continues the restored state (``start``, or its content digest).

    Starting lineage: ``start.lineage`` when the checkpoint names a journal point, else a lineage
    whose header base is that content digest (no parent). Within a lineage the records must run
    ``index+1, index+2, ...``; at its end a child lineage whose base is (this lineage, last index)
    continues the chain. A torn or corrupt record cuts its segment there (the walk goes on only
    if a later segment continues exactly); a forged, foreign or missing record stops the walk.
    """
    by_lineage: dict[bytes, list[Segment]] = {}
    for seg in sorted(segments, key=lambda s: (s.first_index, s.name)):
        by_lineage.setdefault(seg.lineage, []).append(seg)
    issues = [Issue("header", s.name, s.first_index, 0, "segment header unreadable") for s in segments
              if s.header is None]  # fmt: skip
    lineage, index = _starting(by_lineage, start, content_sha256)
    if lineage is None:
        return Walk((), (), tuple(issues), None, start.index if start else 0, None, ())
    out: list[Record] = []
    used: list[str] = []
    cuts: list[tuple[str, int]] = []
    seen: set[bytes] = set()
    current: bytes | None = lineage
    while current is not None and current not in seen:
        seen.add(current)
        lineage = current
        for seg in by_lineage.get(lineage, []):
            if seg.header is None or (seg.records and seg.records[-1].index <= index):
                continue  # unreadable header, or wholly covered by the start state
            if seg.first_index > index + 1:
                gap = Issue("gap", seg.name, index + 1, 0, f"{_records(index + 1, seg.first_index - 1)} missing "
                            f"(segment {seg.name} starts at {seg.first_index})")  # fmt: skip
                issues.append(gap)
                return Walk(tuple(out), tuple(used), tuple(issues), gap, index, lineage, tuple(cuts))
            used.append(seg.name)
            stop = _take(seg, lineage, index, out, issues)
            index = out[-1].index if out else index
            if stop is not None:
                if stop.kind in STOP_KINDS:
                    return Walk(tuple(out), tuple(used), tuple(issues), stop, index, lineage, tuple(cuts))
                cuts.append((seg.name, stop.offset))
        current = _child(by_lineage, lineage.hex(), index)
    return Walk(tuple(out), tuple(used), tuple(issues), None, index, lineage, tuple(cuts))


def root_digest(segments: Sequence[Segment]) -> str | None:
    """The content digest the newest root lineage continues (a walk's start without a checkpoint), or None."""
    roots = [(s.header.created, s.header.base.content_sha256 or "") for s in segments
             if s.header is not None and s.header.base.lineage is None]  # fmt: skip
    return (max(roots)[1] or None) if roots else None


def covered(seg: Segment, start: Point | None) -> bool:
    """Whether the start state (a checkpoint's journal point) holds all of ``seg``: removed, not set aside."""
    return (start is not None and seg.lineage == bytes.fromhex(start.lineage) and bool(seg.records)
            and seg.records[-1].index <= start.index and seg.stop is None)  # fmt: skip


def summary(w: Walk, segments: Sequence[Segment], start: Point | None) -> dict[str, Any]:
    """What a replay from ``start`` does (``appliance journal check``; boot's replay does the same).

    ``set_aside_records``: the step records a boot moves to ``JOURNAL/retired/`` (after the stop,
    and in segments neither on the chain nor covered by the start); records past a torn or corrupt
    record are unreadable and not counted (their bytes go too).
    """
    aside = [s for s in segments if s.name not in w.used and not covered(s, start)]
    after_stop = 0
    if w.stopped is not None and w.stopped.segment in w.used:
        seg = next(s for s in segments if s.name == w.stopped.segment)
        after_stop = sum(1 for r in seg.records if r.offset >= w.stopped.offset)
    return {
        "records": len(w.records),
        "first": w.records[0].index if w.records else None,
        "last": w.records[-1].index if w.records else None,
        "last_index": w.last_index,
        "stopped": _issue(w.stopped) if w.stopped else None,
        "cuts": [{"segment": name, "offset": offset} for name, offset in w.cuts],
        "issues": [_issue(i) for i in w.issues],
        "set_aside_segments": [s.name for s in aside],
        "set_aside_records": after_stop + sum(len(s.records) for s in aside),
    }


def _issue(i: Issue) -> dict[str, Any]:
    return {"kind": i.kind, "segment": i.segment, "index": i.index, "offset": i.offset, "detail": i.detail}


def _starting(by_lineage: Mapping[bytes, list[Segment]], start: Point | None, digest: str | None
              ) -> tuple[bytes | None, int]:  # fmt: skip
    if start is not None:
        lineage = bytes.fromhex(start.lineage)
        return (lineage if lineage in by_lineage else _child(by_lineage, start.lineage, start.index)), start.index
    if digest is None:
        return None, 0
    roots = [(segs[0].header.created, lin) for lin, segs in by_lineage.items() if segs[0].header is not None
             and segs[0].header.base.lineage is None and segs[0].header.base.content_sha256 == digest]  # fmt: skip
    if not roots:
        return None, 0
    lineage = max(roots)[1]
    return lineage, by_lineage[lineage][0].first_index - 1


def _child(by_lineage: Mapping[bytes, list[Segment]], parent: str, index: int) -> bytes | None:
    kids = [(segs[0].header.created, lin) for lin, segs in by_lineage.items() if segs[0].header is not None
            and segs[0].header.base.lineage == parent and segs[0].header.base.index == index]  # fmt: skip
    return max(kids)[1] if kids else None


def _take(seg: Segment, lineage: bytes, index: int, out: list[Record], issues: list[Issue]) -> Issue | None:
    """Append ``seg``'s records after ``index``; the issue that stopped it (None: all taken)."""
    expect = index + 1
    for pos, rec in enumerate(seg.records):
        misplaced = _misplaced(seg, pos, lineage, index, expect)
        if misplaced is None:
            if rec.index <= index:
                continue  # already in the start state
            out.append(rec)
            expect = rec.index + 1
            continue
        issues.append(misplaced)
        return misplaced
    if seg.stop is not None:
        issue = Issue(seg.stop.kind, seg.name, expect, seg.stop.offset, seg.stop.detail)
        issues.append(issue)
        return issue
    return None


def _misplaced(seg: Segment, pos: int, lineage: bytes, index: int, expect: int) -> Issue | None:
    """Why record ``pos`` of ``seg`` cannot replay next (``expect``), or None (``index``: the start state's)."""
    rec = seg.records[pos]
    if rec.lineage != lineage or (pos and rec.index <= seg.records[pos - 1].index):  # another's, or one passed
        return Issue("foreign", seg.name, rec.index, rec.offset,
                     f"record {rec.index} of lineage {rec.lineage.hex()[:8]} where {lineage.hex()[:8]} "
                     f"record {expect} belongs")  # fmt: skip
    if rec.index <= index:
        return None
    if rec.index > expect:
        return Issue("gap", seg.name, expect, rec.offset, f"{_records(expect, rec.index - 1)} missing: record "
                     f"{rec.index} follows record {expect - 1} (a record was removed)")  # fmt: skip
    ahead = seg.header is not None and seg.header.ahead
    if ahead and rec.index not in seg.outcomes and pos + 1 < len(seg.records):
        return Issue("gap", seg.name, rec.index, rec.offset, f"the outcome record of step {rec.index} is "
                     f"missing: step record {seg.records[pos + 1].index} follows it directly (a record was removed)"
                     )  # fmt: skip
    return None


def _records(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"
