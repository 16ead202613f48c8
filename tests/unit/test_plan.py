"""Pure store decisions: frame cutting, target slot, generation numbering, boot order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import SlotUnavailableError
from appliance.format.plan import Candidate, SlotView, boot_order, choose_target_slot, frame_spans, next_generation

pytestmark = pytest.mark.unit


@given(st.integers(0, 10**6), st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 4096).map(lambda x: x * 16))
def test_frames_tile_the_tensor_in_whole_elements(nbytes: int, itemsize: int, frame_size: int) -> None:
    nbytes -= nbytes % itemsize
    spans = frame_spans(nbytes, itemsize, frame_size)
    assert sum(size for _, size in spans) == nbytes
    offset = 0
    for off, size in spans:
        assert off == offset and 0 < size <= frame_size and size % itemsize == 0
        offset += size


def _views(a: int | None, b: int | None, good_a: int | None = None, good_b: int | None = None) -> list[SlotView]:
    return [SlotView("A", True, a, good_a), SlotView("B", True, b, good_b)]


def test_target_is_the_slot_without_the_newest_checkpoint() -> None:
    assert choose_target_slot(_views(None, None)) == "A"
    assert choose_target_slot(_views(1, None)) == "B"
    assert choose_target_slot(_views(1, 2)) == "A"


def test_a_good_slot_is_protected_even_when_the_other_is_newer() -> None:
    # B holds gen 4 (committed, never booted); A was proven GOOD at gen 3: keep writing into B.
    assert choose_target_slot(_views(3, 4, good_a=3)) == "B"


def test_newest_valid_overrides_newest_committed() -> None:
    # B/4 is committed but does not open; A/3 is the newest valid: protect A.
    assert choose_target_slot(_views(3, 4), newest_valid="A") == "B"


def test_unavailable_target_is_refused() -> None:
    views = [SlotView("A", True, 1), SlotView("B", False, None)]
    with pytest.raises(SlotUnavailableError):
        choose_target_slot(views)


def test_generations_only_grow() -> None:
    assert next_generation([]) == 1
    assert next_generation([3, 9, 4]) == 10
    assert next_generation([3], floor=20) == 20


def test_boot_order_is_newest_first_and_prefers_the_good_slot_on_ties() -> None:
    cands = [Candidate("A", 3), Candidate("B", 5), Candidate("B", 3)]
    assert [(c.slot, c.generation) for c in boot_order(cands)] == [("B", 5), ("A", 3), ("B", 3)]
    assert [(c.slot, c.generation) for c in boot_order(cands, good_slot="B")][1] == ("B", 3)
