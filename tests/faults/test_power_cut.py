"""Simulated power loss on every write path: cuts, unsynced drops, ALICE orderings, torn writes.

Each write path of the store (``workloads.write_paths``) is recorded once on
``RecordingStorage``; crash states are built from its log (``crashstates``) and the real boot
(``boot.BOOT``) runs on each one. Per run: every cut point of every path, five random
unsynced-drop subsets per cut, every legal ALICE ordering pair, eight torn variants per write.
"""

from __future__ import annotations

import random

import pytest

from . import counts
from .checker import CrashChecker, next_persist, recover_twice
from .crashstates import cuts, orderings, torn, unsynced
from .model import History, Keys
from .workloads import Recorded

pytestmark = pytest.mark.faults

UNSYNCED_PER_CUT = 5


def _ids(recorded: list[Recorded]) -> list[str]:
    return [r.path for r in recorded]


@pytest.fixture(params=range(10), ids=lambda i: f"path{i}")
def path(request: pytest.FixtureRequest, recorded: list[Recorded]) -> Recorded:
    if request.param >= len(recorded):
        pytest.skip("fewer write paths than parameter slots")
    return recorded[request.param]


def test_power_cut_at_every_operation_boundary_keeps_the_oracle(path: Recorded, keys: Keys, history: History) -> None:
    """A cut after any operation (all or only fsynced ops persisted) boots acked or in-flight."""
    counts.add("cut points", len(path.ops) + 1)
    checker = CrashChecker(path, keys, history)
    checker.run(cuts(path.ops))
    checker.assert_clean()


def test_dropped_unsynced_operations_keep_the_oracle(path: Recorded, keys: Keys, history: History) -> None:
    """Durable ops plus any random subset of unsynced ones boot acked or in-flight."""
    checker = CrashChecker(path, keys, history)
    checker.run(unsynced(path.ops, UNSYNCED_PER_CUT, random.Random(len(path.ops))))
    checker.assert_clean()


def test_alice_reorderings_keep_the_oracle(path: Recorded, keys: Keys, history: History) -> None:
    """An unsynced op lost while every later op persisted never breaks the oracle."""
    checker = CrashChecker(path, keys, history)
    checker.run(orderings(path.ops))
    checker.assert_clean()


def test_torn_writes_keep_the_oracle(path: Recorded, keys: Keys, history: History) -> None:
    """A write persisted partially, garbage-extended or sector-trashed never breaks the oracle."""
    checker = CrashChecker(path, keys, history, seed=7)
    checker.run(torn(path.ops))
    checker.assert_clean()


def test_recovery_survives_a_second_cut_and_the_next_persist_succeeds(
    path: Recorded, keys: Keys, history: History
) -> None:
    """On every distinct cut image: a cut inside recovery keeps the answer; the next commit boots."""
    checker = CrashChecker(path, keys, history)
    checker.run(cuts(path.ops))
    for image, outcome in checker.images():
        recover_twice(checker, image, outcome)
        next_persist(checker, image, path.next_step)
    checker.assert_clean()
