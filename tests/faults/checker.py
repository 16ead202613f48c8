"""Boot every crash state of a recorded write path and hold the result to the oracle.

``CrashChecker`` builds each state's image, boots it once per distinct image, checks the
outcome against the expectation at that cut, and — on request — powers the node off again in
the middle of its own recovery writes (``recover_twice``) and persists once more afterwards
(``next_persist``). Violations are collected (first ten reported) rather than stopping at one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from appliance.storage.recording import Image, RecordingStorage
from appliance.store.store import Store

from . import counts
from .boot import BOOT, BootOutcome, OracleViolation, check
from .crashstates import CrashState, build, cuts
from .model import History, Keys
from .workloads import Recorded


class CrashChecker:
    def __init__(self, rec: Recorded, keys: Keys, history: History, seed: int = 0, *, tally: bool = True) -> None:
        self.rec = rec
        self.tally = tally  # False for negative controls: their violations are expected
        self.keys = keys
        self.history = history
        self.seed = seed
        self.booted: dict[int, tuple[Image, BootOutcome]] = {}
        self.violations: list[str] = []

    def boot(self, image: Image) -> BootOutcome:
        return BOOT(RecordingStorage(image), self.rec.config, self.keys.trust)

    def run(self, states: Iterable[CrashState]) -> int:
        n = 0
        for state in states:
            self.check(state)
            n += 1
        return n

    def check(self, state: CrashState) -> BootOutcome:
        image = build(self.rec.base, self.rec.ops, state, self.seed)
        key = image.fingerprint()
        if key not in self.booted:
            self.booted[key] = (image, self.boot(image))
            self._tally("states.distinct")
        outcome = self.booted[key][1]
        self._tally(f"states.{state.kind}")
        try:
            check(outcome, self.rec.expect_at(state.cut), f"{self.rec.path}: {state.describe(self.rec.ops)}")
        except OracleViolation as exc:
            self._tally("oracle.violations")
            self.violations.append(str(exc))
        return outcome

    def _tally(self, key: str) -> None:
        if self.tally:
            counts.add(key)

    def assert_clean(self) -> None:
        assert not self.violations, f"{len(self.violations)} oracle violations:\n" + "\n".join(self.violations[:10])

    def images(self) -> list[tuple[Image, BootOutcome]]:
        return list(self.booted.values())


def recover_twice(checker: CrashChecker, image: Image, first: BootOutcome, sample: int | None = None) -> None:
    """A power cut inside boot's own writes (slot marking) must not change what boot yields.

    Every cut point of boot's writes, or ``sample`` of them chosen at random (seeded).
    """
    storage = RecordingStorage(image)
    answer = (first.generation, first.contents)
    outcome = BOOT(storage, checker.rec.config, checker.keys.trust)  # its writes are logged in storage.ops
    if (outcome.generation, outcome.contents) != answer:
        checker.violations.append(f"{checker.rec.path}: boot is not deterministic on one image")
    states = list(cuts(storage.ops))
    if sample is not None and len(states) > sample:
        states = random.Random(len(checker.violations) + len(storage.ops)).sample(states, sample)
    for state in states:
        second = checker.boot(build(image, storage.ops, state))
        counts.add("recovery.recrash")
        if (second.generation, second.contents) != answer:
            checker.violations.append(
                f"{checker.rec.path}: a cut during recovery ({state.describe(storage.ops)}) changed "
                f"the answer from {first.describe()} to {second.describe()}"
            )


def next_persist(checker: CrashChecker, image: Image, step: int) -> None:
    """After recovery the next commit succeeds, and boot then yields exactly it."""
    storage = RecordingStorage(image)
    BOOT(storage, checker.rec.config, checker.keys.trust)
    store = Store(storage, checker.rec.config, checker.keys.trust)
    result, _ = store.commit(checker.history.sources(step), [checker.keys.signer], {"step": step})
    outcome = BOOT(storage, checker.rec.config, checker.keys.trust)
    counts.add("recovery.next_persist")
    if outcome.generation != result.generation or outcome.contents != checker.history.digest(step):
        checker.violations.append(
            f"{checker.rec.path}: after recovery a new commit (gen {result.generation}) booted as {outcome.describe()}"
        )
