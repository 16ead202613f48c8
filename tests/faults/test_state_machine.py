"""Stateful fuzzing: random sequences of commit, compaction, GC, bit rot, scrub, power cut and boot.

A hypothesis ``RuleBasedStateMachine`` drives the real store on ``RecordingStorage`` and keeps
a model: the acknowledged generation and every generation's content digest. A power cut
replaces the store by a random crash state of the last operation's log (any generator of
``crashstates``). Boot must then yield exactly what the supervisor's walk gives on that image
— the newest checkpoint that verifies (``verify_store``) and that no slot state marks BAD —
and that must be the in-flight generation or no older than what boot yielded before the
operation. Bit rot hits only frames whose twin in the other slot is intact, so a scrub heals
everything. BAD marks are the supervisor's memory: a checkpoint it fell back from while a frame
was rotten stays skipped after a heal until its slot's state moves on to another candidate.
A cut inside a scrub may leave an older checkpoint healed and acked's own repair undone.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from appliance.format.slotstate import BootState
from appliance.storage.recording import Image, Op, RecordingStorage, Rename
from appliance.store import layout
from appliance.store.bootstate import SlotStates
from appliance.store.discovery import open_checkpoint, scan
from appliance.store.scrub import scrub
from appliance.store.store import Store
from appliance.store.verify import verify_store

from . import counts
from .boot import BOOT, BootOutcome, Expectation, check, supervisor_boot
from .crashstates import CrashState, build, optional_ops, torn_bytes
from .model import MODEL_ID, History, Keys, empty_store_storage, make_config
from .supervisor import run_supervisor

pytestmark = pytest.mark.faults

KEYS = Keys()
HISTORY = History(seed=17)


class NodeFloor:
    """The node's anti-rollback floor store, kept across the machine's boots (docs/boot.md §4).

    Stand-in for the secure-storage floor (OP-TEE / fTPM on a Jetson, ``FileFloor`` elsewhere):
    provisioned at 0, raised only by boot, never lowered. It is not on the store's disk, so the
    machine's power cuts do not hit it (the floor file's own damage cases are in
    ``tests/unit/test_boot_sequence.py``).
    """

    def __init__(self) -> None:
        self.value = 0

    def read(self) -> int:
        return self.value

    def raise_to(self, value: int) -> int:
        self.value = max(self.value, value)
        return self.value


@dataclass
class LastOp:
    base: Image
    ops: list[Op]
    acked_before: int | None  # what boot yielded before the operation
    inflight: int | None  # what the operation makes boot yield (a commit's generation, a heal)
    acked: int | None  # the newest acknowledged commit before the operation
    is_scrub: bool = False


class StoreMachine(RuleBasedStateMachine):
    @initialize(floor_deleted=st.booleans())
    def start(self, floor_deleted: bool = False) -> None:
        self.storage = empty_store_storage()
        self.keep = 2
        self.step = 0
        self.acked: int | None = None
        self.contents: dict[int, str] = {}
        self.rotten: set[tuple[str, str]] = set()
        self.slot_of: dict[int, str] = {}
        self.last: LastOp | None = None
        # The node's floor store, or None: its file deleted, so every boot rebuilds it from the slot states
        self.floor: NodeFloor | None = None if floor_deleted else NodeFloor()
        counts.add("machine.examples")

    @property
    def store(self) -> Store:
        return Store(self.storage, make_config(keep=self.keep), KEYS.trust)

    def _record(self, inflight_action: str, full: bool = False) -> None:
        base = self.storage.image()
        self.storage = RecordingStorage(base)
        before, inflight, acked = self._walk_answer(), None, self.acked
        if inflight_action == "commit":
            self.step += 1
            result, _ = self.store.commit(HISTORY.sources(self.step), [KEYS.signer], {"step": self.step}, full=full)
            inflight = result.generation
            self.contents[inflight] = HISTORY.digest(self.step)
            self.slot_of[inflight] = result.slot
            self.acked = inflight
        elif inflight_action == "gc":
            self.store.gc()
        self.last = LastOp(base, list(self.storage.ops), before, inflight, acked)
        counts.add("machine.steps")

    @rule(full=st.booleans())
    def commit(self, full: bool) -> None:
        self._record("commit", full)

    @rule(keep=st.sampled_from([1, 2, 3]))
    def gc(self, keep: int) -> None:
        self.keep = keep
        self._record("gc")

    @precondition(lambda self: self.acked is not None)
    @rule(data=st.data())
    def rot_a_frame_with_an_intact_twin(self, data: st.DataObject) -> None:
        names = {s: set(self.storage.listdir(layout.frames_dir(s)) or []) for s in "AB"}
        candidates = sorted(
            (slot, name)
            for slot in "AB"
            for name in names[slot] & names["B" if slot == "A" else "A"]
            if ("B" if slot == "A" else "A", name) not in self.rotten
        )
        if not candidates:
            return
        slot, name = data.draw(st.sampled_from(candidates))
        path = f"{slot}/frames/{name}"
        rotten = torn_bytes(self.storage.read(path, 1 << 24), "sector", random.Random(len(self.rotten)))
        self.storage.unlink(path)
        self.storage.write_new(path, rotten)
        self.rotten.add((slot, name))
        self.last = None  # rot is not a write path to crash in
        counts.add("machine.steps")

    @rule()
    def scrub_heals(self) -> None:
        before = self._boot().generation
        base = self.storage.image()
        self.storage = RecordingStorage(base)
        report = scrub(self.storage, KEYS.trust, MODEL_ID)
        self.rotten = self._rotten_now()
        for mark in report.marked:  # marked only when no intact twin is left (GC may have removed it)
            twin = ("B" if mark["slot"] == "A" else "A", mark["digest"])
            assert twin in self.rotten or twin[1] not in (self.storage.listdir(layout.frames_dir(twin[0])) or [])
        self.last = LastOp(base, list(self.storage.ops), before, self._boot().generation, self.acked, is_scrub=True)
        counts.add("machine.steps")

    def _rotten_now(self) -> set[tuple[str, str]]:
        """Frames whose bytes do not hash to their name (a cut write's temp file is no frame: GC removes it)."""
        out = set()
        for slot in "AB":
            for name in self.storage.listdir(layout.frames_dir(slot)) or []:
                if (
                    layout.parse_frame_name(name) is not None
                    and hashlib.sha256(self.storage.read(f"{slot}/frames/{name}", 1 << 24)).hexdigest() != name
                ):
                    out.add((slot, name))
        return out

    @precondition(lambda self: self.last is not None and (self.last.is_scrub or not self.rotten))
    @rule(data=st.data())
    def power_cut(self, data: st.DataObject) -> None:
        last = self.last
        assert last is not None
        cut = data.draw(st.integers(0, len(last.ops)))
        optional = optional_ops(last.ops, cut)
        kind = data.draw(st.sampled_from(["cut", "durable", "unsynced", "torn"]))
        dropped = {
            "cut": frozenset(),
            "durable": frozenset(optional),
            "unsynced": frozenset(i for i in optional if data.draw(st.booleans())),
            "torn": frozenset(),
        }[kind]
        writes = [i for i in optional if type(last.ops[i]).__name__ == "Write"]
        torn = None
        if kind == "torn" and writes:
            torn = (data.draw(st.sampled_from(writes)), data.draw(st.sampled_from(["half", "garbage", "sector"])))
        state = CrashState(kind, cut, dropped, torn)
        self.storage = RecordingStorage(build(last.base, last.ops, state))
        answer = self._walk_answer()
        self._loses_nothing(last, answer)
        check(self._boot(), Expectation.of(answer, [], self.contents), "machine cut")
        self.rotten = self._rotten_now()
        if answer != last.inflight:  # the cut commit never returned; a cut GC or scrub acknowledges nothing
            self.acked = last.acked
        self.last = None
        counts.add("machine.crashes")
        counts.add("machine.steps")

    def _loses_nothing(self, last: LastOp, answer: int | None) -> None:
        """The oracle: after a cut boot yields the in-flight generation or what it yielded before, never older.

        It may yield a newer acknowledged one that a BAD mark no longer hides (a torn record of the
        in-flight commit replaced the mark), or, in a scrub, one whose repairs all landed while the
        repair of the one a whole scrub heals was cut. Repairs only add verified checkpoints.
        """
        if answer == last.inflight:
            return
        where = f"machine cut: boot would yield {answer}, before the operation {last.acked_before}"
        assert last.acked_before is None or (answer is not None and answer >= last.acked_before), where
        assert answer is None or (self.acked is not None and answer <= self.acked), f"{where}, acked {self.acked}"
        if last.is_scrub:
            assert answer is None or (last.inflight is not None and answer < last.inflight), f"{where}, whole scrub"

    def _walk_answer(self) -> int | None:
        """What the supervisor's walk yields on this image, read before it marks anything.

        Newest first, it yields the first generation that verifies (``verify_store``, independent
        of boot) unless a slot state marks it BAD or it is below the node's anti-rollback floor
        (docs/boot.md §4: once both slots proved a generation, falling back below the older of
        the two is a rollback, refused even when a frame rot left nothing else; recovery mode).
        A slot state names one candidate: trying or refusing a newer generation of the slot
        first replaces the mark, so the generation is then tried again (docs/boot.md §3); only
        the slot's newest generation keeps its mark.
        """
        report = verify_store(self.storage, KEYS.trust, MODEL_ID)
        states = SlotStates(self.storage)
        newest = {slot: max((c.generation for c in report.checkpoints if c.slot == slot), default=0) for slot in "AB"}
        bootable = [
            c.generation
            for c in report.checkpoints
            if c.ok
            and c.generation >= self._floor_now(states)
            and (c.generation < newest[c.slot] or not states.load(c.slot).refuses(c.generation))
        ]
        return max(bootable, default=None)

    def _floor_now(self, states: SlotStates) -> int:
        """The floor boot reads: the node's store, or, when its file is gone, rebuilt from the slot
        states (docs/boot.md §4: the older of the two slots' GOOD generations once both have one)."""
        if self.floor is not None:
            return self.floor.read()
        good = [states.load(slot).good_generation for slot in "AB"]
        return 0 if None in good else min(g for g in good if g is not None)

    def _boot(self) -> BootOutcome:
        if BOOT is supervisor_boot:  # the node's floor persists across boots, as on a device
            return supervisor_boot(self.storage, make_config(keep=self.keep), KEYS.trust, self.floor)
        return BOOT(self.storage, make_config(keep=self.keep), KEYS.trust)

    def _expected(self) -> int | None:
        """Newest acknowledged generation still committed, not marked BAD by an earlier boot and not
        below the anti-rollback floor.

        BAD marks are the boot supervisor's memory (issue 4): a checkpoint it fell back from
        while a frame was rotten stays BAD after a scrub heals the frame, until the slot's state
        moves on to another candidate. Boot can yield newer than this, never older.
        """
        if self.acked is None:
            return None
        states = SlotStates(self.storage)
        floor = self._floor_now(states)
        for generation in sorted((g for g in self.slot_of if floor <= g <= self.acked), reverse=True):
            slot = self.slot_of[generation]
            if self.storage.size(layout.record_path(slot, generation)) is None:
                continue  # collected by GC
            if not states.load(slot).refuses(generation):
                return generation
        return None

    @invariant()
    def boot_yields_the_acknowledged_checkpoint(self) -> None:
        if not hasattr(self, "storage"):
            return
        expected, floor = self._walk_answer(), self._expected()
        outcome = self._boot()
        assert outcome.generation == expected, f"boot yielded {outcome.describe()}, the walk gives {expected}"
        if expected is not None:
            assert self.acked is not None and expected <= self.acked, f"gen {expected} is newer than acked"
            assert outcome.contents == self.contents[expected]
        if not self.rotten:  # nothing is damaged: only a BAD mark or the floor may hide an acknowledged one
            assert floor is None or (expected is not None and expected >= floor), f"gen {floor} did not boot"


class Scripted:
    """Stands in for hypothesis' ``data`` when a test replays a sequence: scripted draws, then False."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object) -> object:
        return self.values.pop(0) if self.values else False


def _frames_named(machine: StoreMachine) -> dict[int, set[str]]:
    """Generation -> the frame digests its manifest names."""
    out = {}
    for outcome in scan(machine.storage).records:
        if outcome.record is not None:
            opened = open_checkpoint(machine.storage, outcome.record, KEYS.trust, MODEL_ID, check_frames=False)
            out[outcome.generation] = {ref.digest.hex for ref in opened.verified.manifest.frame_index().values()}
    return out


def _frame_to_rot(machine: StoreMachine, slot: str, named_by: list[int], not_named_by: tuple[int, ...] = ()) -> str:
    """A frame of ``slot`` that ``named_by`` all name and ``not_named_by`` do not, with an intact twin elsewhere."""
    names = _frames_named(machine)
    other = "B" if slot == "A" else "A"
    twins = set(machine.storage.listdir(layout.frames_dir(other)) or []) - {n for _, n in machine.rotten}
    wanted = set.intersection(*(names[g] for g in named_by)) - set().union(*(names[g] for g in not_named_by))
    return min(wanted & twins)


def _rot(machine: StoreMachine, slot: str, frame: str) -> None:
    machine.rot_a_frame_with_an_intact_twin(Scripted((slot, frame)))
    machine.boot_yields_the_acknowledged_checkpoint()


def test_a_cut_between_a_scrubs_repairs_boots_the_checkpoint_healed_so_far() -> None:
    """A cut after a scrub healed slot A but not yet B boots A's newest checkpoint: verified, though older than acked.

    With the floor file deleted (rebuilt from the slot states at every boot): with the node's floor
    kept (3 here) nothing below it boots and the node stays in recovery until a technician acts.
    """
    machine = StoreMachine()
    machine.start(floor_deleted=True)
    for _ in range(4):  # A holds generations 1 and 3, B holds 2 and 4
        machine.commit(False)
        machine.boot_yields_the_acknowledged_checkpoint()
    rotten = {}
    for slot, gens in (("A", [1, 3]), ("B", [2, 4])):  # all damaged: the boot after the second rot marks each BAD
        rotten[slot] = _frame_to_rot(machine, slot, gens)
        _rot(machine, slot, rotten[slot])
    machine.scrub_heals()
    last = machine.last
    assert last is not None and (machine.acked, last.acked_before, last.inflight) == (4, None, 4)
    cut = next(i for i, op in enumerate(last.ops) if isinstance(op, Rename) and op.dst == rotten["B"])
    machine.power_cut(Scripted(cut, "cut"))  # the oracle before the fix demanded gen 4 (or recovery) here
    states = SlotStates(machine.storage)
    assert (states.load("A").state, states.load("A").generation) == (BootState.GOOD, 3)
    assert (states.load("B").state, states.load("B").generation) == (BootState.BAD, 4)
    assert machine.rotten == {("B", rotten["B"])}


def test_a_bad_mark_lasts_until_its_slot_moves_on_then_the_healed_acked_checkpoint_boots() -> None:
    """Acked gen 3, BAD after rot, stays skipped after the heal until A is marked again; then it boots, not gen 1.

    With the floor file deleted (rebuilt from the slot states at every boot), so gen 1 may boot.
    """
    machine = StoreMachine()
    machine.start(floor_deleted=True)
    for _ in range(3):  # A holds generations 1 and 3, B holds 2
        machine.commit(False)
        machine.boot_yields_the_acknowledged_checkpoint()
    _rot(machine, "A", _frame_to_rot(machine, "A", [3], (1,)))  # boot falls back from gen 3 (BAD) to gen 2
    machine.scrub_heals()
    machine.boot_yields_the_acknowledged_checkpoint()
    assert machine._boot().generation == 2  # healed, but BAD is sticky
    machine.commit(False)  # gen 4 into A, then a cut before its first write: gen 3 is still the acked one
    machine.power_cut(Scripted(0, "cut"))
    assert machine.acked == 3  # the old model took what boot yielded (gen 2) as acked
    _rot(machine, "B", _frame_to_rot(machine, "B", [2], (1,)))  # boot: gen 3 BAD, gen 2 fails, gen 1 is GOOD
    assert SlotStates(machine.storage).load("A").generation == 1  # A's state moved on: gen 3's mark is gone
    machine.scrub_heals()
    machine.boot_yields_the_acknowledged_checkpoint()  # the old model expected gen 1 here
    assert machine._boot().generation == 3


def test_rot_in_both_slots_never_rolls_back_below_the_floor_it_enters_recovery() -> None:
    """Regression (stop 19, CI's draw): gens 1+3 in A, 2 in B, both newest rotten -> recovery, never gen 1.

    Both slots proved a generation (A 3, B 2), so the floor is 2: gen 1 would be a rollback. The
    old oracle ignored the floor and demanded gen 1; boot was right. A scrub heals the frames,
    yet the BAD marks of the failed boot keep the node in recovery until a technician clears them.
    """
    machine = StoreMachine()
    machine.start()
    assert machine.floor is not None
    for step in (
        machine.commit,
        machine.commit,
        lambda _: machine.power_cut(Scripted(0, "cut")),
        machine.commit,
        machine.commit,
    ):
        step(False)  # the power cut hits the second commit before its first write: acked stays 1
        machine.boot_yields_the_acknowledged_checkpoint()  # every step boots, as hypothesis' invariant does
    assert (machine._boot().generation, machine.floor.read()) == (3, 2)
    _rot(machine, "B", _frame_to_rot(machine, "B", [2], (1,)))
    _rot(machine, "A", _frame_to_rot(machine, "A", [3], (1,)))
    assert machine._walk_answer() is None and machine._boot().recovery
    outcome, _ = run_supervisor(machine.storage, make_config(keep=machine.keep), KEYS.trust, machine.floor)
    assert any("below the anti-rollback floor 2" in failure for failure in outcome.failures), outcome.failures
    machine.scrub_heals()
    machine.boot_yields_the_acknowledged_checkpoint()
    assert machine._boot().recovery  # healed, but BAD marks are sticky


StoreMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_random_sequences_of_commit_gc_rot_scrub_and_power_cuts_keep_the_oracle = StoreMachine.TestCase


class NightlyStoreMachine(StoreMachine):
    pass


NightlyStoreMachine.TestCase.settings = settings(
    max_examples=3000, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_nightly_random_sequences = pytest.mark.slow(NightlyStoreMachine.TestCase)
