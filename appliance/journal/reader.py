"""Reading the journal directory back: every segment, its header and its good records.

Owns: ``read_segments`` (decode each ``seg-*.ajl`` file up to its first torn, corrupt or forged
record; a segment whose header is missing or fails is kept with ``header=None`` so the walk
can report it). Does not own which records replay (``format.journal_walk.walk``).
"""

from __future__ import annotations

from appliance.errors import ApplianceError
from appliance.format.journal import (
    KIND_HEADER,
    KIND_OUTCOME,
    Bad,
    Record,
    SegmentHeader,
    decode_at,
    parse_segment_name,
)
from appliance.format.journal_walk import Segment
from appliance.journal.files import JournalFiles


def read_segments(files: JournalFiles, key: bytes) -> list[Segment]:
    out = []
    for name in files.list():
        parsed = parse_segment_name(name)
        if parsed is not None:
            out.append(read_segment(name, parsed[0], parsed[1], files.read(name), key))
    return out


def read_segment(name: str, first: int, lineage: bytes, data: bytes, key: bytes) -> Segment:
    head = decode_at(key, data, 0)
    stop: Bad | None
    header: SegmentHeader | None = None
    if isinstance(head, Record) and head.kind == KIND_HEADER and head.lineage == lineage and head.index == first:
        try:
            header = SegmentHeader.from_bytes(head.payload)
        except ApplianceError:
            header = None
    if header is None or not isinstance(head, Record):
        bad = head if isinstance(head, Bad) else Bad("corrupt", 0, "segment header missing or not this segment's")
        return Segment(name, lineage, first, None, (), bad, len(data))
    records: list[Record] = []
    outcomes: dict[int, Record] = {}
    offset, stop = head.end, None
    while True:
        rec = decode_at(key, data, offset)
        if rec is None:
            break
        stop = rec if isinstance(rec, Bad) else _misplaced(rec, name, header, records, outcomes)
        if stop is not None:
            break
        assert isinstance(rec, Record)
        if rec.kind == KIND_OUTCOME:
            outcomes[rec.index] = rec
        else:
            records.append(rec)
        offset = rec.end
    return Segment(name, lineage, first, header, tuple(records), stop, len(data), outcomes)


def _misplaced(rec: Record, name: str, header: SegmentHeader, steps: list[Record], outcomes: dict[int, Record]
               ) -> Bad | None:  # fmt: skip
    """Why an authentic record cannot be where it is (read as foreign: replay stops there), or None."""
    if rec.kind == KIND_HEADER:
        return Bad("foreign", rec.offset, f"a segment header inside segment {name}")
    if rec.kind != KIND_OUTCOME:
        return None
    prev = steps[-1] if steps else None
    if (
        not header.ahead
        or prev is None
        or (prev.lineage, prev.index) != (rec.lineage, rec.index)
        or rec.index in outcomes
    ):
        return Bad("foreign", rec.offset, f"an outcome of record {rec.index} that does not follow its step record")
    return None
