"""The walk's stops (pure, ``appliance.format.journal_walk``): a removed step record, segment or outcome
record is a gap that stops replay, like a forged or foreign record (trial 4, N4).

Version 3 segments are written ahead: step record, then its outcome record, under one lock. Only the
last record of a segment (a crash or a cut ended it there) may lack its outcome.
"""

from __future__ import annotations

import pytest

from appliance.format.journal import KIND_HEADER, KIND_OUTCOME, KIND_STEP, Base, SegmentHeader, encode_record
from appliance.format.journal import segment_name as name
from appliance.format.journal_walk import Segment, root_digest, walk
from appliance.journal.reader import read_segment

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
L1, L2 = bytes([1]) * 16, bytes([2]) * 16
ROOT = Base("d" * 64)


def _v3(lineage: bytes, first: int, steps: list[int], outcomes: set[int] | None = None, base: Base = ROOT) -> Segment:
    """A version 3 segment holding ``steps`` (each followed by its outcome when in ``outcomes``, default all)."""
    header = SegmentHeader(base, "m:f", 1, "2026-12-04T18:00:00Z", ahead=True).to_bytes()
    data = encode_record(KEY, KIND_HEADER, lineage, first, header)
    for i in steps:
        data += encode_record(KEY, KIND_STEP, lineage, i, f"step {i}".encode())
        if outcomes is None or i in outcomes:
            data += encode_record(KEY, KIND_OUTCOME, lineage, i, b'{"error":null,"result":{}}')
    return read_segment(name(first, lineage), first, lineage, data, KEY)


def _indices(segments: list[Segment]) -> list[int]:
    return [r.index for r in walk(segments, None, ROOT.content_sha256).records]


def test_a_complete_version_3_chain_replays_without_a_stop() -> None:
    w = walk([_v3(L1, 1, [1, 2, 3, 4, 5])], None, ROOT.content_sha256)
    assert [r.index for r in w.records] == [1, 2, 3, 4, 5] and w.stopped is None and w.issues == ()


def test_a_removed_step_record_and_its_outcome_is_a_gap_that_stops_the_walk() -> None:
    seg = _v3(L1, 1, [1, 2, 4, 5])  # the trial's journal: records 1, 2, 4, 5
    w = walk([seg], None, ROOT.content_sha256)
    assert [r.index for r in w.records] == [1, 2]
    assert w.stopped is not None and w.stopped.kind == "gap" and w.stopped.index == 3
    assert w.stopped.offset == seg.records[2].offset and "record 3 missing" in w.stopped.detail


def test_a_removed_outcome_record_in_the_middle_is_a_gap_that_stops_before_its_step() -> None:
    seg = _v3(L1, 1, [1, 2, 3, 4, 5], outcomes={1, 2, 4, 5})
    w = walk([seg], None, ROOT.content_sha256)
    assert [r.index for r in w.records] == [1, 2]
    assert w.stopped is not None and w.stopped.kind == "gap" and w.stopped.index == 3
    assert "outcome record of step 3 is missing" in w.stopped.detail and w.stopped.offset == seg.records[2].offset


def test_only_the_last_record_of_a_segment_may_lack_its_outcome() -> None:
    """A crash between a step record and its outcome, or a cut there: the step replays (unchecked)."""
    assert _indices([_v3(L1, 1, [1, 2, 3], outcomes={1, 2})]) == [1, 2, 3]
    rotated = [_v3(L1, 1, [1, 2, 3], outcomes={1, 2}), _v3(L1, 4, [4, 5])]  # a cut that a later segment continues
    assert _indices(rotated) == [1, 2, 3, 4, 5]
    child = _v3(L2, 4, [4, 5], base=Base("d" * 64, L1.hex(), 3))  # the next boot's lineage continues after 3
    assert _indices([_v3(L1, 1, [1, 2, 3], outcomes={1, 2}), child]) == [1, 2, 3, 4, 5]


def test_a_removed_segment_is_a_gap_that_stops_the_walk() -> None:
    w = walk([_v3(L1, 1, [1, 2]), _v3(L1, 5, [5, 6])], None, ROOT.content_sha256)
    assert [r.index for r in w.records] == [1, 2] and w.used == (name(1, L1),)
    assert w.stopped is not None and w.stopped.kind == "gap" and "records 3..4 missing" in w.stopped.detail


def test_a_record_repeated_or_out_of_order_inside_a_segment_is_foreign() -> None:
    w = walk([_v3(L1, 1, [1, 2, 3, 2])], None, ROOT.content_sha256)
    assert [r.index for r in w.records] == [1, 2, 3] and w.stopped is not None and w.stopped.kind == "foreign"


def test_records_the_start_point_covers_are_skipped_not_flagged() -> None:
    from appliance.format.journal import Point

    seg = _v3(L1, 1, [1, 2, 3, 4], outcomes={3, 4})  # outcomes of 1 and 2 no longer matter: in the checkpoint
    w = walk([seg], Point(L1.hex(), 2), None)
    assert [r.index for r in w.records] == [3, 4] and w.stopped is None


def test_root_digest_is_the_content_the_newest_root_lineage_continues() -> None:
    older = _v3(L1, 1, [1])
    newer = read_segment(
        name(1, L2), 1, L2,
        encode_record(KEY, KIND_HEADER, L2, 1,
                      SegmentHeader(Base("e" * 64), "m:f", 1, "2026-12-05T00:00:00Z", ahead=True).to_bytes()), KEY,
    )  # fmt: skip
    child = _v3(L2, 2, [2], base=Base("e" * 64, L1.hex(), 1))
    assert root_digest([older]) == "d" * 64 and root_digest([older, newer, child]) == "e" * 64
    assert root_digest([]) is None
