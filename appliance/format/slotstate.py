"""Slot boot state: the explicit UNKNOWN / GOOD / BAD state machine of one checkpoint slot.

Owns: ``BootState``, ``SlotState`` (with provenance and its JSON form), every allowed
transition, the boot-attempt counter and the anti-rollback floor rule. Does not own reading
or writing ``{A,B}/state.json`` (``appliance.store.bootstate``) or deciding *when* a
transition happens (``appliance.boot``). Pure: callers pass the time as a string.

A slot's state describes the *latest candidate tried from that slot* (``generation`` +
``manifest_digest``); ``good_*`` keeps the newest generation of the slot that was proven GOOD
(restored, canary answered), which is what the commit target rule and GC protect.

Transitions (docs/boot.md §2)::

    any      --attempt(new candidate)-->   UNKNOWN, attempts=1
    any      --attempt(same candidate)-->  same state, attempts+1
    UNKNOWN  --mark_good-->                GOOD, attempts=0, good_* = candidate
    GOOD     --crash(same candidate)-->    GOOD, attempts+1   (boot counting after restore)
    any      --node_fault(same candidate)--> same state, attempts-1 (the model or node failed, not it)
    any      --mark_bad-->                 BAD (good_* cleared if it named this candidate)
    any      --refuse(newer-or-same gen)-> BAD (discovery refused it: signature, floor, ...)
    any      --reset-->                    UNKNOWN, attempts=0 (technician)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import get_int, get_str, require_keys
from appliance.format.commit import SLOT_NAMES
from appliance.format.digest import Digest
from appliance.format.manifest import MAX_GENERATION

STATE_FORMAT = "appliance.slot-state"
STATE_VERSION = 1
REASON_MAX = 1024


class BootState(str, enum.Enum):
    UNKNOWN = "UNKNOWN"
    GOOD = "GOOD"
    BAD = "BAD"


@dataclass(frozen=True)
class SlotState:
    slot: str
    state: BootState = BootState.UNKNOWN
    generation: int | None = None  # the candidate this state is about
    manifest_digest: str | None = None
    attempts: int = 0  # boot attempts (and crashes after restore) since it was last marked GOOD
    reason: str = ""  # why it is BAD, or why the file read as UNKNOWN
    updated: str = ""  # UTC time of the last transition
    good_generation: int | None = None  # newest generation of this slot proven GOOD
    good_digest: str | None = None
    good_since: str | None = None

    def __post_init__(self) -> None:
        if self.slot not in SLOT_NAMES:
            raise ManifestError(f"slot state names an unknown slot {self.slot!r:.10}")
        if self.attempts < 0:
            raise ManifestError("slot state attempts must not be negative")

    def is_candidate(self, generation: int, digest: str | None) -> bool:
        """True if this state is about exactly ``generation`` (and ``digest``, when both are known)."""
        if self.generation != generation:
            return False
        return digest is None or self.manifest_digest is None or digest == self.manifest_digest

    def refuses(self, generation: int) -> bool:
        """A boot must skip ``generation`` of this slot: it was marked BAD."""
        return self.state is BootState.BAD and self.generation == generation

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "slot": self.slot,
            "state": self.state.value,
            "generation": self.generation,
            "manifest_digest": self.manifest_digest,
            "attempts": self.attempts,
            "reason": self.reason,
            "updated": self.updated,
            "good_generation": self.good_generation,
            "good_digest": self.good_digest,
            "good_since": self.good_since,
        }

    @classmethod
    def from_dict(cls, obj: object, slot: str) -> SlotState:
        """Parse a state file's JSON; any defect raises ``ManifestError`` (callers read it as UNKNOWN)."""
        keys = set(cls(slot).to_dict())
        d = require_keys(obj, "slot state", keys)
        if d["format"] != STATE_FORMAT or d["version"] != STATE_VERSION:
            raise ManifestError("not a v1 slot state")
        if d["slot"] != slot:
            raise ManifestError(f"slot state for {d['slot']!r:.10} found in slot {slot}")
        try:
            state = BootState(d["state"])
        except ValueError as exc:
            raise ManifestError(f"slot state has an unknown state {d['state']!r:.20}") from exc
        return cls(
            slot=slot,
            state=state,
            generation=_opt_generation(d, "generation"),
            manifest_digest=_opt_digest(d, "manifest_digest"),
            attempts=get_int(d, "attempts", "slot state", 0, 1_000_000),
            reason=get_str(d, "reason", "slot state", REASON_MAX),
            updated=get_str(d, "updated", "slot state", 64),
            good_generation=_opt_generation(d, "good_generation"),
            good_digest=_opt_digest(d, "good_digest"),
            good_since=None if d["good_since"] is None else get_str(d, "good_since", "slot state", 64),
        )


def _opt_generation(d: dict[str, Any], key: str) -> int | None:
    return None if d[key] is None else get_int(d, key, "slot state", 1, MAX_GENERATION)


def _opt_digest(d: dict[str, Any], key: str) -> str | None:
    return None if d[key] is None else Digest.parse(d[key], f"slot state {key}").hex


def unknown(slot: str, reason: str = "") -> SlotState:
    """The state of a slot that has no (readable) state file."""
    return SlotState(slot, reason=reason[:REASON_MAX])


def attempt(s: SlotState, generation: int, digest: str, now: str) -> SlotState:
    """A boot is about to try ``generation``: count the attempt before anything can crash."""
    if s.is_candidate(generation, digest) and s.state is not BootState.BAD:
        return replace(s, attempts=s.attempts + 1, updated=now)
    return replace(
        s,
        state=BootState.UNKNOWN,
        generation=generation,
        manifest_digest=digest,
        attempts=1,
        reason="",
        updated=now,
    )


def crash(s: SlotState, generation: int, digest: str, now: str) -> SlotState:
    """The service serving ``generation`` died after its restore: one more boot attempt used."""
    if not s.is_candidate(generation, digest):
        return attempt(s, generation, digest, now)
    return replace(s, attempts=s.attempts + 1, updated=now)


def node_fault(s: SlotState, generation: int, digest: str, reason: str, now: str) -> SlotState:
    """The trial of ``generation`` failed for a node or model fault (docs/boot.md §4): the attempt is
    given back, so retried boots never exhaust, and so never condemn, a healthy checkpoint."""
    if not s.is_candidate(generation, digest):
        return s
    return replace(s, attempts=max(0, s.attempts - 1), reason=reason[:REASON_MAX], updated=now)


def exhausted(s: SlotState, max_attempts: int) -> bool:
    """True once the candidate used more attempts than allowed without staying up."""
    return s.state is not BootState.BAD and s.attempts > max_attempts


def mark_good(s: SlotState, generation: int, digest: str, now: str) -> SlotState:
    """Restored, verified and answered its canary: the slot's newest proven state."""
    return replace(
        s,
        state=BootState.GOOD,
        generation=generation,
        manifest_digest=digest,
        attempts=0,
        reason="",
        updated=now,
        good_generation=generation,
        good_digest=digest,
        good_since=now,
    )


def mark_bad(s: SlotState, generation: int, digest: str | None, reason: str, now: str) -> SlotState:
    """``generation`` must not be booted again; a GOOD mark for the same candidate is withdrawn."""
    withdrawn = s.good_generation == generation
    return replace(
        s,
        state=BootState.BAD,
        generation=generation,
        manifest_digest=digest,
        reason=reason[:REASON_MAX],
        updated=now,
        good_generation=None if withdrawn else s.good_generation,
        good_digest=None if withdrawn else s.good_digest,
        good_since=None if withdrawn else s.good_since,
    )


def refuse(s: SlotState, generation: int, digest: str | None, reason: str, now: str) -> SlotState:
    """Discovery refused ``generation``; recorded only if it is at least the slot's current candidate."""
    if s.generation is not None and generation < s.generation:
        return s
    if s.refuses(generation):
        return s
    return mark_bad(s, generation, digest, reason, now)


def reset(s: SlotState, now: str) -> SlotState:
    """A technician clears a BAD mark (e.g. after fixing the model code): the candidate is tried again."""
    return replace(s, state=BootState.UNKNOWN, attempts=0, reason="reset by a technician", updated=now)


def good_generations(states: Iterable[SlotState]) -> dict[str, int | None]:
    """``{slot: newest GOOD generation}``: what ``Store.good_provider`` returns."""
    return {s.slot: s.good_generation for s in states}


def floor_after_good(current: int, states: Iterable[SlotState]) -> int:
    """The anti-rollback floor after a slot was marked GOOD.

    Raised to the *older* of the two slots' GOOD generations, so both the state just proven
    and the fallback slot's proven state stay bootable (AVB: "the largest value allowing all
    bootable slots to boot"). While only one slot has ever been GOOD the floor stays put.
    Never lowered.
    """
    good = [s.good_generation for s in states if s.good_generation is not None]
    if len(good) < len(SLOT_NAMES):
        return current
    return max(current, min(good))
