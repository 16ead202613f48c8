"""Stateful fuzzing: random sequences of commit, compaction, GC, bit rot, scrub, power cut and boot.

A hypothesis ``RuleBasedStateMachine`` drives the real store on ``RecordingStorage`` and keeps
a model: the acknowledged generation and every generation's content digest. A power cut
replaces the store by a random crash state of the last operation's log (any generator of
``crashstates``); boot must then yield the acknowledged or the in-flight generation. Bit rot
hits only frames whose twin in the other slot is intact, so a scrub must heal everything and
boot must again yield exactly the acknowledged generation — unless a boot already fell back
from it while it was damaged: the supervisor marked it BAD, and BAD stays after a heal.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from appliance.storage.recording import Image, Op, RecordingStorage
from appliance.store import layout
from appliance.store.bootstate import SlotStates
from appliance.store.scrub import scrub
from appliance.store.store import Store

from . import counts
from .boot import BOOT, BootOutcome, Expectation, check
from .crashstates import CrashState, build, optional_ops, torn_bytes
from .model import MODEL_ID, History, Keys, empty_store_storage, make_config

pytestmark = pytest.mark.faults

KEYS = Keys()
HISTORY = History(seed=17)


@dataclass
class LastOp:
    base: Image
    ops: list[Op]
    acked_before: int | None  # what boot yielded before the operation
    inflight: int | None  # what the operation makes boot yield (a commit's generation, a heal)
    is_scrub: bool = False


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.storage = empty_store_storage()
        self.keep = 2
        self.step = 0
        self.acked: int | None = None
        self.contents: dict[int, str] = {}
        self.rotten: set[tuple[str, str]] = set()
        self.slot_of: dict[int, str] = {}
        self.last: LastOp | None = None
        counts.add("machine.examples")

    @property
    def store(self) -> Store:
        return Store(self.storage, make_config(keep=self.keep), KEYS.trust)

    def _record(self, inflight_action: str, full: bool = False) -> None:
        base = self.storage.image()
        self.storage = RecordingStorage(base)
        before, inflight = self._expected(), None
        if inflight_action == "commit":
            self.step += 1
            result, _ = self.store.commit(HISTORY.sources(self.step), [KEYS.signer], {"step": self.step}, full=full)
            inflight = result.generation
            self.contents[inflight] = HISTORY.digest(self.step)
            self.slot_of[inflight] = result.slot
            self.acked = inflight
        elif inflight_action == "gc":
            self.store.gc()
        self.last = LastOp(base, list(self.storage.ops), before, inflight)
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
        self.last = LastOp(base, list(self.storage.ops), before, self._boot().generation, is_scrub=True)
        counts.add("machine.steps")

    def _rotten_now(self) -> set[tuple[str, str]]:
        out = set()
        for slot in "AB":
            for name in self.storage.listdir(layout.frames_dir(slot)) or []:
                if hashlib.sha256(self.storage.read(f"{slot}/frames/{name}", 1 << 24)).hexdigest() != name:
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
        outcome = self._boot()
        acked = last.acked_before if cut < len(last.ops) else (last.inflight or last.acked_before)
        check(outcome, Expectation.of(acked, [last.inflight] if last.inflight else [], self.contents), "machine cut")
        self.rotten = self._rotten_now()
        if not last.is_scrub:  # a cut in a scrub changes frames, never which generations are committed
            self.acked = outcome.generation
        self.last = None
        counts.add("machine.crashes")
        counts.add("machine.steps")

    def _boot(self) -> BootOutcome:
        return BOOT(self.storage, make_config(keep=self.keep), KEYS.trust)

    def _expected(self) -> int | None:
        """Newest acknowledged generation still committed and not marked BAD by an earlier boot.

        BAD marks are the boot supervisor's memory (issue 4): a checkpoint it fell back from
        while a frame was rotten stays BAD after a scrub heals the frame.
        """
        if self.acked is None:
            return None
        states = SlotStates(self.storage)
        for generation in sorted((g for g in self.slot_of if g <= self.acked), reverse=True):
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
        expected = self._expected()
        outcome = self._boot()
        if not self.rotten:
            assert outcome.generation == expected, f"boot yielded {outcome.describe()}, expected {expected}"
            assert expected is None or outcome.contents == self.contents[expected]
        elif not outcome.recovery:  # rot may cost checkpoints (both slots: recovery); what boots is intact
            assert outcome.generation is not None and self.acked is not None and outcome.generation <= self.acked
            assert outcome.contents == self.contents[outcome.generation]


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
