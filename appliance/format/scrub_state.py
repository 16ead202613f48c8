"""The scrub cursor (``ROOT/scrub.json``): where a resumable scrub pass stands and what it marked.

Owns: ``ScrubCursor`` and ``MarkedFrame``, their JSON form, and the pure walk order
(``remaining``). Does not own reading frames, repairing them or the clock
(``appliance.store.scrub``).

A pass visits every frame that a committed checkpoint of either slot names, in
``(slot, digest)`` order; ``position`` is the last frame finished, so a scrub cut short (time
budget, power loss) resumes after it. ``marked`` lists frames found damaged with no verified
twin in the other slot: reported and kept as evidence, never patched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import get_int, get_str, require_keys
from appliance.format.commit import SLOT_NAMES
from appliance.format.digest import Digest

SCRUB_FORMAT = "appliance.scrub"
SCRUB_VERSION = 1
MAX_MARKED = 100_000

Position = tuple[str, str]  # (slot, frame digest hex)


@dataclass(frozen=True)
class MarkedFrame:
    """A frame that failed verification and could not be repaired from the other slot."""

    slot: str
    digest: str
    problem: str
    generations: tuple[int, ...]  # checkpoints of ``slot`` that name the frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "digest": self.digest,
            "problem": self.problem,
            "generations": list(self.generations),
        }

    @classmethod
    def from_dict(cls, obj: object) -> MarkedFrame:
        d = require_keys(obj, "scrub mark", {"slot", "digest", "problem", "generations"})
        gens = d["generations"]
        if d["slot"] not in SLOT_NAMES or not isinstance(gens, list) or len(gens) > 1000:
            raise ManifestError("scrub mark has an unknown slot or a malformed generation list")
        if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in gens):
            raise ManifestError("scrub mark generations must be positive integers")
        return cls(
            slot=d["slot"],
            digest=Digest.parse(d["digest"], "scrub mark digest").hex,
            problem=get_str(d, "problem", "scrub mark", 1024),
            generations=tuple(gens),
        )


@dataclass(frozen=True)
class ScrubCursor:
    pass_number: int = 1  # the pass in progress (1 = the first ever)
    position: Position | None = None  # last frame finished in this pass; None = pass start
    passes_completed: int = 0
    marked: tuple[MarkedFrame, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCRUB_FORMAT,
            "version": SCRUB_VERSION,
            "pass": self.pass_number,
            "position": None if self.position is None else list(self.position),
            "passes_completed": self.passes_completed,
            "marked": [m.to_dict() for m in self.marked],
        }

    @classmethod
    def from_dict(cls, obj: object) -> ScrubCursor:
        d = require_keys(obj, "scrub.json", {"format", "version", "pass", "position", "passes_completed", "marked"})
        if d["format"] != SCRUB_FORMAT or d["version"] != SCRUB_VERSION:
            raise ManifestError("scrub.json is not a v1 scrub cursor")
        marked = d["marked"]
        if not isinstance(marked, list) or len(marked) > MAX_MARKED:
            raise ManifestError(f"scrub.json marked must be a list of at most {MAX_MARKED}")
        return cls(
            pass_number=get_int(d, "pass", "scrub.json", 1, 2**62),
            position=_parse_position(d["position"]),
            passes_completed=get_int(d, "passes_completed", "scrub.json", 0, 2**62),
            marked=tuple(MarkedFrame.from_dict(m) for m in marked),
        )

    def advanced(self, position: Position) -> ScrubCursor:
        return replace(self, position=position)

    def finished_pass(self) -> ScrubCursor:
        return replace(
            self, pass_number=self.pass_number + 1, position=None, passes_completed=self.passes_completed + 1
        )

    def with_mark(self, mark: MarkedFrame) -> ScrubCursor:
        kept = tuple(m for m in self.marked if (m.slot, m.digest) != (mark.slot, mark.digest))
        return replace(self, marked=(*kept, mark))

    def without_mark(self, slot: str, digest: str) -> ScrubCursor:
        return replace(self, marked=tuple(m for m in self.marked if (m.slot, m.digest) != (slot, digest)))

    def keep_marks(self, present: set[Position]) -> ScrubCursor:
        """Drop marks of frames no committed checkpoint names any more (collected by GC)."""
        return replace(self, marked=tuple(m for m in self.marked if (m.slot, m.digest) in present))


def _parse_position(value: object) -> Position | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or value[0] not in SLOT_NAMES:
        raise ManifestError("scrub.json position must be null or [slot, digest]")
    return value[0], Digest.parse(value[1], "scrub.json position").hex


def remaining(order: Sequence[Position], position: Position | None) -> list[Position]:
    """The frames of ``order`` (sorted) still to visit in this pass, after ``position``."""
    if position is None:
        return list(order)
    return [p for p in order if p > position]
