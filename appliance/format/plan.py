"""Pure decisions of the store: how to cut frames, which slot to write, what to try first.

Owns: ``frame_spans``, ``choose_target_slot``, ``next_generation``, ``first_unused_generation``,
``boot_order``.
Does not own: reading slots (callers build ``SlotView`` values from disk) or acting on the
answer. Every function here is total over its inputs and has no side effects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from appliance.errors import SlotUnavailableError
from appliance.format.commit import SLOT_NAMES


def frame_spans(nbytes: int, itemsize: int, frame_size: int) -> list[tuple[int, int]]:
    """Cut ``nbytes`` of one tensor into (offset, size) frames of whole elements.

    Every frame but the last is ``frame_size`` rounded down to whole elements; frames never
    cross tensor boundaries ("tensor-aligned"). An empty tensor has no frames.
    """
    step = max(itemsize, frame_size - frame_size % itemsize)
    return [(off, min(step, nbytes - off)) for off in range(0, nbytes, step)]


@dataclass(frozen=True)
class SlotView:
    """What the decision needs to know about one slot."""

    name: str
    available: bool  # directory present (mounted) and readable
    newest_committed: int | None  # newest generation with a parseable commit record
    good_generation: int | None = None  # generation the slot state marks GOOD, if any


def protected_slot(views: Iterable[SlotView], newest_valid: str | None = None) -> str | None:
    """The slot holding the newest GOOD checkpoint; else the newest valid one; else newest committed."""
    views = list(views)
    good = [v for v in views if v.good_generation is not None]
    if good:
        return max(good, key=lambda v: (v.good_generation or 0, v.name)).name
    if newest_valid is not None:
        return newest_valid
    committed = [v for v in views if v.newest_committed is not None]
    if committed:
        return max(committed, key=lambda v: (v.newest_committed or 0, v.name)).name
    return None


def choose_target_slot(views: Iterable[SlotView], newest_valid: str | None = None) -> str:
    """A commit goes into the slot that does not hold the newest good checkpoint.

    "Good" is the slot state GOOD when the boot layer has marked one; before any boot it is
    the slot of the newest checkpoint that opens (``newest_valid``). Refuses
    (``SlotUnavailableError``) when the target is not available: writing into the protected
    slot would leave no independent fallback.
    """
    views = list(views)
    protected = protected_slot(views, newest_valid)
    target = next(name for name in SLOT_NAMES if name != protected) if protected else SLOT_NAMES[0]
    view = next((v for v in views if v.name == target), None)
    if view is None or not view.available:
        raise SlotUnavailableError(f"slot {target} (the commit target) is missing or not mounted")
    return target


def next_generation(seen: Iterable[int], floor: int = 0) -> int:
    """One above every generation ever seen in either slot, and never below the floor."""
    return max(max(seen, default=0) + 1, floor)


def first_unused_generation(newest_valid: int, seen: Iterable[int], floor: int = 0) -> int:
    """The lowest generation above every valid checkpoint (and at least ``floor``) that no file uses.

    Valid checkpoints order the history; names that do not verify (junk, forgeries, damaged or
    half-written checkpoints) are only stepped over, never reused: boot refuses BAD checkpoints
    by generation, so a reused number would hide the new commit. An unverified name therefore
    cannot push the counter past 2^63-1 (TUF fast-forward), and the loop is bounded by the
    number of names seen.
    """
    taken = set(seen)
    candidate = max(newest_valid + 1, floor)
    while candidate in taken:
        candidate += 1
    return candidate


@dataclass(frozen=True)
class Candidate:
    slot: str
    generation: int


def boot_order(candidates: Iterable[Candidate], good_slot: str | None = None) -> list[Candidate]:
    """Newest generation first; on a tie the slot last proven GOOD first, then A before B."""
    return sorted(candidates, key=lambda c: (-c.generation, c.slot != good_slot, c.slot))
