"""Simulated power loss on every write path: cuts, unsynced drops, ALICE orderings, torn writes.

Each write path of the store (``workloads.write_paths``) is recorded once on
``RecordingStorage``; crash states are built from its log (``crashstates``) and the real boot
(``boot.BOOT``) runs on each one. Per run: every cut point of every path, five random
unsynced-drop subsets per cut, every legal ALICE ordering pair, eight torn variants per write.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from appliance.storage.recording import Fsync, FsyncDir, Op, apply

from . import counts
from .checker import CrashChecker, next_persist, recover_twice
from .crashstates import cuts, orderings, pair_orderings, torn, unsynced
from .model import History, Keys
from .workloads import PATHS, Recorded

pytestmark = pytest.mark.faults

UNSYNCED_PER_CUT = 5
RECRASH_FULL_EVERY = 8  # every 8th image: a cut at every point of boot's own writes; the rest: 2 sampled


@pytest.fixture(params=list(PATHS))
def path(request: pytest.FixtureRequest, recorded: dict[str, Recorded]) -> Recorded:
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
    """On every distinct cut image: a cut inside boot's slot marking keeps the answer; the next commit boots."""
    checker = CrashChecker(path, keys, history, tally=False)  # the cut states are counted by the test above
    checker.run(cuts(path.ops))
    for n, (image, outcome) in enumerate(checker.images()):
        recover_twice(checker, image, outcome, sample=None if n % RECRASH_FULL_EVERY == 0 else 2)
        next_persist(checker, image, path.next_step)
    checker.assert_clean()


def _without(path: Recorded, drop: Callable[[int, Op], bool]) -> Recorded:
    ops = [op for i, op in enumerate(path.ops) if not drop(i, op)]
    removed = len(path.ops) - len(ops)
    acks = [(end - sum(1 for i, op in enumerate(path.ops[:end]) if drop(i, op)), gen) for end, gen in path.acks]
    assert removed > 0
    return dataclasses.replace(path, ops=ops, acks=acks, path=f"{path.path} (sabotaged)")


def test_harness_catches_a_commit_that_never_syncs(recorded: dict[str, Recorded], keys: Keys, history: History) -> None:
    """Negative control: the same commit without its fsyncs loses the acknowledged checkpoint."""
    sabotaged = _without(recorded["second"], lambda _, op: isinstance(op, (Fsync, FsyncDir)))
    checker = CrashChecker(sabotaged, keys, history, tally=False)
    checker.run(cuts(sabotaged.ops))
    counts.add("negative controls caught", bool(checker.violations))
    assert checker.violations, "the crash model failed to notice a commit without fsyncs"


def test_harness_catches_a_record_written_before_its_frames_directory_is_synced(
    recorded: dict[str, Recorded], keys: Keys, history: History
) -> None:
    """Negative control: without the frames-directory fsync (W1), frame names can be lost."""
    path = recorded["first"]
    frames_dir_syncs = {
        i for i, op in enumerate(path.ops) if isinstance(op, FsyncDir) and _is_frames_dir(path, op.inode)
    }
    sabotaged = _without(path, lambda i, _: i in frames_dir_syncs)
    checker = CrashChecker(sabotaged, keys, history, tally=False)
    checker.run(orderings(sabotaged.ops))
    checker.run(cuts(sabotaged.ops))
    counts.add("negative controls caught", bool(checker.violations))
    assert checker.violations, "the crash model failed to notice frame names that were never made durable"


def _is_frames_dir(path: Recorded, inode: int) -> bool:
    image = path.base.copy()
    for op in path.ops:
        apply(image, op)
    return any(image.dirs[slot].get("frames") == inode for slot in (image.dirs[0]["A"], image.dirs[0]["B"]))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_nightly_unsynced_drop_and_pair_ordering_sweep(
    seed: int, recorded: dict[str, Recorded], keys: Keys, history: History
) -> None:
    """Nightly: 64 unsynced subsets per cut and every ordering with two lost ops, on every path."""
    for path in recorded.values():
        checker = CrashChecker(path, keys, history, seed=seed)
        checker.run(unsynced(path.ops, 64, random.Random(seed * 7919 + len(path.ops))))
        checker.run(pair_orderings(path.ops, random.Random(seed), per_cut=8))
        checker.assert_clean()
