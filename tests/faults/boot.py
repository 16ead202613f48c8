"""The boot under test, and the oracle every fault tier checks its result against.

THE PLUG POINT: ``BOOT`` is the one function the suites call to "power on" a store. It is the
real boot supervisor (``supervisor_boot``: ``appliance.boot.sequence`` with an in-process model
service, see ``supervisor.py``), whose slot-state marking writes go through the storage under
test, so ``recover_twice`` cuts power inside them. ``store_boot`` — the store's discovery plus
verified restore with fallback (``appliance.api.load``) — is the boot without slot states.

Oracle (issue 5): with ``acked`` the newest checkpoint whose commit returned before the fault,
boot yields ``acked`` or the in-flight one — never older, never anything that fails a check,
never a half-restored model; if nothing valid remains, a typed ``NoValidCheckpointError``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch

from appliance import api
from appliance.errors import NoValidCheckpointError
from appliance.node.floor import GenerationFloor
from appliance.signing import TrustStore
from appliance.storage import Storage
from appliance.store.config import StoreConfig
from appliance.store.store import Store

from .model import contents_digest


@dataclass(frozen=True)
class BootOutcome:
    """What boot produced: a restored generation (with its content digest) or recovery mode."""

    generation: int | None  # None: NoValidCheckpointError -> recovery mode
    slot: str | None = None
    contents: str | None = None

    @property
    def recovery(self) -> bool:
        return self.generation is None

    def describe(self) -> str:
        return "recovery mode (no valid checkpoint)" if self.recovery else f"gen {self.generation} from {self.slot}"


BootFn = Callable[[Storage, StoreConfig, TrustStore], BootOutcome]


def store_boot(storage: Storage, config: StoreConfig, trust: TrustStore) -> BootOutcome:
    """Today's boot: newest checkpoint that opens and restores verified, else the next one."""
    store = Store(storage, config, trust)
    try:
        loaded = api.load(store, workers=1)
    except NoValidCheckpointError:
        return BootOutcome(None)
    tensors = {n: t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() for n, t in loaded.tensors.items()}
    return BootOutcome(loaded.generation, loaded.slot, contents_digest(tensors))


def supervisor_boot(
    storage: Storage, config: StoreConfig, trust: TrustStore, floor: GenerationFloor | None = None
) -> BootOutcome:
    """The boot supervisor of issue 4 (``appliance boot``'s sequence) with an in-process service.

    ``floor``: the node's anti-rollback floor store kept across boots; default a missing floor
    file, which boot rebuilds from the slot states (``floor.missing``, docs/boot.md §4).
    """
    from .supervisor import run_supervisor

    outcome, restored = run_supervisor(storage, config, trust, floor)
    if outcome.serving is None:
        assert outcome.exit_code == NoValidCheckpointError.exit_code, f"boot failed otherwise: {outcome.recovery}"
        return BootOutcome(None)
    slot, generation = outcome.serving["slot"], outcome.serving["generation"]
    return BootOutcome(generation, slot, restored[(slot, generation)])


BOOT: BootFn = supervisor_boot
BOOT_WRITES_SLOT_STATE = True  # the boot marks slots in {A,B}/state.json: enables the slot-state damage cases


@dataclass(frozen=True)
class Expectation:
    """What a fault may leave: the generations boot may yield and their exact contents."""

    allowed: frozenset[int]  # e.g. {acked, in-flight}
    contents: Mapping[int, str]  # generation -> content digest
    recovery_ok: bool = False  # True when nothing was acknowledged before the fault

    @classmethod
    def of(cls, acked: int | None, inflight: Collection[int], contents: Mapping[int, str]) -> Expectation:
        allowed = {g for g in (acked, *inflight) if g is not None}
        return cls(frozenset(allowed), dict(contents), recovery_ok=acked is None)


class OracleViolation(AssertionError):
    pass


def check(outcome: BootOutcome, expect: Expectation, where: str) -> None:
    """Raise ``OracleViolation`` naming the crash state if ``outcome`` breaks the oracle."""
    if outcome.recovery:
        if not expect.recovery_ok:
            raise OracleViolation(f"{where}: boot found no valid checkpoint, expected one of {sorted(expect.allowed)}")
        return
    assert outcome.generation is not None
    if outcome.generation not in expect.allowed:
        raise OracleViolation(f"{where}: boot yielded {outcome.describe()}, allowed {sorted(expect.allowed)}")
    if outcome.contents != expect.contents.get(outcome.generation):
        raise OracleViolation(f"{where}: gen {outcome.generation} restored with wrong bytes (half-restored?)")
