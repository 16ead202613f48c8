"""The journal record format and the walk rules (pure): every torn, corrupt, forged or foreign record is caught."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.format.journal import (
    KIND_HEADER,
    KIND_STEP,
    OVERHEAD,
    Bad,
    Base,
    Point,
    Record,
    SegmentHeader,
    StepPayload,
    TensorBlob,
    decode_at,
    encode_record,
    parse_segment_name,
    segment_name,
)
from appliance.format.journal_walk import Segment, walk

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
L1, L2 = bytes([1]) * 16, bytes([2]) * 16


def _header(base: Base) -> bytes:
    return SegmentHeader(base, "m:f", 1, "2026-12-04T18:00:00Z").to_bytes()


def _segment_bytes(lineage: bytes, first: int, n: int, base: Base, key: bytes = KEY) -> bytes:
    out = encode_record(key, KIND_HEADER, lineage, first, _header(base))
    for i in range(first, first + n):
        out += encode_record(key, KIND_STEP, lineage, i, f"step {i}".encode())
    return out


def _read(name: str, data: bytes, key: bytes = KEY) -> Segment:
    from appliance.journal.reader import read_segment

    parsed = parse_segment_name(name)
    assert parsed is not None
    return read_segment(name, parsed[0], parsed[1], data, key)


def test_a_record_round_trips_and_its_overhead_is_fixed() -> None:
    data = encode_record(KEY, KIND_STEP, L1, 7, b"payload")
    assert len(data) == OVERHEAD + 7
    rec = decode_at(KEY, data, 0)
    assert isinstance(rec, Record) and (rec.index, rec.lineage, rec.payload, rec.end) == (7, L1, b"payload", len(data))
    assert decode_at(KEY, data, len(data)) is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_truncation_is_torn_never_a_record(data: st.DataObject) -> None:
    rec = encode_record(KEY, KIND_STEP, L1, 3, b"x" * 50)
    cut = data.draw(st.integers(1, len(rec) - 1))
    out = decode_at(KEY, rec[:cut], 0)
    assert isinstance(out, Bad) and out.kind == "torn"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_flipped_bit_is_caught_as_corrupt_or_torn(data: st.DataObject) -> None:
    rec = bytearray(encode_record(KEY, KIND_STEP, L1, 3, b"y" * 40))
    pos, bit = data.draw(st.integers(0, len(rec) - 1)), data.draw(st.integers(0, 7))
    rec[pos] ^= 1 << bit
    out = decode_at(KEY, bytes(rec), 0)
    assert isinstance(out, Bad)
    assert out.kind in ("corrupt", "torn", "forged")
    if pos < len(rec) - 32:  # a flip outside the MAC breaks a checksum first
        assert out.kind in ("corrupt", "torn")


def test_a_record_without_the_key_is_forged_even_with_good_checksums() -> None:
    out = decode_at(KEY, encode_record(OTHER_KEY, KIND_STEP, L1, 3, b"inject"), 0)
    assert isinstance(out, Bad) and out.kind == "forged"


def test_segment_names_sort_by_first_index_and_parse_back() -> None:
    names = [segment_name(i, L1) for i in (10, 2, 100)]
    assert sorted(names) == [segment_name(i, L1) for i in (2, 10, 100)]
    assert parse_segment_name(segment_name(42, L2)) == (42, L2)
    assert parse_segment_name("seg-1-x.ajl") is None


def test_step_payload_round_trips_exact_bytes() -> None:
    p = StepPayload(2**62 + 5, 9, (TensorBlob("inputs", "float32", (2, 2), bytes(range(16))),
                                 TensorBlob("targets", "float32", (2,), b"\x00" * 8)), {"loss": 0.1 + 0.2})  # fmt: skip
    assert StepPayload.from_bytes(p.to_bytes()) == p


# --- the walk ----------------------------------------------------------------------------------------


def test_walk_replays_after_the_checkpoint_point_then_follows_the_child_lineage() -> None:
    a = _read(segment_name(1, L1), _segment_bytes(L1, 1, 10, Base("d" * 64)))
    b = _read(segment_name(11, L2), _segment_bytes(L2, 11, 5, Base("d" * 64, L1.hex(), 10)))
    w = walk([b, a], Point(L1.hex(), 4), None)
    assert [r.index for r in w.records] == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert w.lineage == L2 and w.last_index == 15 and w.stopped is None and w.issues == ()


def test_walk_from_a_checkpoint_without_point_finds_the_root_lineage_by_content() -> None:
    a = _read(segment_name(1, L1), _segment_bytes(L1, 1, 3, Base("d" * 64)))
    assert [r.index for r in walk([a], None, "d" * 64).records] == [1, 2, 3]
    assert walk([a], None, "e" * 64).records == ()


def test_a_torn_tail_cuts_at_the_last_good_record() -> None:
    data = _segment_bytes(L1, 1, 5, Base("d" * 64))
    seg = _read(segment_name(1, L1), data[:-10])
    w = walk([seg], None, "d" * 64)
    assert [r.index for r in w.records] == [1, 2, 3, 4]
    assert w.cuts == ((seg.name, seg.records[-1].end),) and w.issues[0].kind == "torn"


def test_a_forged_record_stops_the_walk_there() -> None:
    data = _segment_bytes(L1, 1, 3, Base("d" * 64)) + encode_record(OTHER_KEY, KIND_STEP, L1, 4, b"evil")
    data += encode_record(KEY, KIND_STEP, L1, 5, b"after")
    w = walk([_read(segment_name(1, L1), data)], None, "d" * 64)
    assert [r.index for r in w.records] == [1, 2, 3]
    assert w.stopped is not None and w.stopped.kind == "forged" and w.stopped.index == 4


def test_a_record_of_another_lineage_is_foreign_and_stops_the_walk() -> None:
    data = _segment_bytes(L1, 1, 2, Base("d" * 64)) + encode_record(KEY, KIND_STEP, L2, 3, b"spliced")
    w = walk([_read(segment_name(1, L1), data)], None, "d" * 64)
    assert [r.index for r in w.records] == [1, 2] and w.stopped is not None and w.stopped.kind == "foreign"


def test_a_missing_segment_is_a_gap_and_nothing_after_it_replays() -> None:
    a = _read(segment_name(1, L1), _segment_bytes(L1, 1, 3, Base("d" * 64)))
    c = _read(segment_name(7, L1), _segment_bytes(L1, 7, 3, Base("d" * 64)))
    w = walk([a, c], None, "d" * 64)
    assert [r.index for r in w.records] == [1, 2, 3] and w.issues[-1].kind == "gap"
    assert w.stopped is w.issues[-1] and w.stopped.index == 4  # a gap stops replay like a foreign record


def test_segments_of_another_checkpoint_do_not_replay() -> None:
    a = _read(segment_name(1, L1), _segment_bytes(L1, 1, 3, Base("e" * 64)))
    assert walk([a], None, "d" * 64).records == ()
    assert walk([a], Point(L2.hex(), 0), "d" * 64).records == ()
