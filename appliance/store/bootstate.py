"""Durable slot boot states: reading and writing ``{A,B}/state.json`` through ``Storage``.

Owns: ``SlotStates`` — reading a slot's state (a missing, unreadable or corrupt file reads as
UNKNOWN with a reason, never as an error, so boot always proceeds and no checkpoint is lost),
writing one durably (``write_durable``: temp, fsync, rename, directory fsync) and answering
``Store.good_provider``. Does not own the state machine (``appliance.format.slotstate``) or
when to transition (``appliance.boot``).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import ApplianceError, SlotUnavailableError, StorageError
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.commit import SLOT_NAMES
from appliance.format.slotstate import SlotState, good_generations, unknown
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.storage import Storage, write_durable
from appliance.store import layout


@dataclass(frozen=True)
class StateReading:
    state: SlotState
    damaged: str | None = None  # why the file could not be used (it then reads as UNKNOWN)


class SlotStates:
    def __init__(self, storage: Storage, limits: Limits = DEFAULT_LIMITS) -> None:
        self.storage = storage
        self.limits = limits

    def read(self, slot: str) -> StateReading:
        path = layout.slot_state_path(slot)
        try:
            data = self.storage.read(path, self.limits.config_max_bytes)
        except FileNotFoundError:
            return StateReading(unknown(slot, "" if self._slot_present(slot) else "slot directory is missing"))
        except (ApplianceError, StorageError, OSError) as exc:
            return _damaged(slot, f"cannot read {path}: {_problem(exc)}")
        try:
            obj = strict_loads(data, what=path, max_bytes=self.limits.config_max_bytes, max_depth=4)
            return StateReading(SlotState.from_dict(obj, slot))
        except ApplianceError as exc:
            return _damaged(slot, f"{path} is corrupt: {exc.problem}")

    def _slot_present(self, slot: str) -> bool:
        try:
            return self.storage.listdir(slot) is not None
        except (ApplianceError, StorageError):
            return False

    def load(self, slot: str) -> SlotState:
        return self.read(slot).state

    def read_all(self) -> dict[str, StateReading]:
        return {slot: self.read(slot) for slot in SLOT_NAMES}

    def write(self, state: SlotState) -> None:
        """Make ``state`` durable; ``SlotUnavailableError`` if the slot directory is gone."""
        try:
            write_durable(self.storage, layout.slot_state_path(state.slot), canonical_bytes(state.to_dict()) + b"\n")
        except FileNotFoundError as exc:
            raise SlotUnavailableError(f"slot {state.slot} is missing; its state cannot be recorded") from exc

    def good_generations(self) -> dict[str, int | None]:
        """``{slot: newest GOOD generation}`` for ``Store.good_provider`` (commit target and GC)."""
        return good_generations(r.state for r in self.read_all().values())


def _damaged(slot: str, reason: str) -> StateReading:
    return StateReading(unknown(slot, reason), damaged=reason)


def _problem(exc: BaseException) -> str:
    return exc.problem if isinstance(exc, ApplianceError) else str(exc)
