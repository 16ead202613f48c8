"""Power cuts during adaptation, in the crash model of tests/faults extended to the journal.

One run of the real journal writer (group commit from two client threads, a rotation when a
state is captured for a checkpoint, the checkpoint's trim) is recorded on
``RecordingJournalFiles``; crash images are built from its log at every cut point — only
fsync-covered bytes kept, everything issued kept (a process kill), a torn prefix of the unsynced
tail, that prefix plus garbage, unsynced name changes dropped at random — and each is booted:
the checkpoint if its commit preceded the cut, else the base, then the journal replayed.
Guarantee: the state is bit-identical to the oracle's state after step K, and K is at least the
last step acknowledged before the cut (no acknowledged step is lost, nothing else is invented).
"""

from __future__ import annotations

import random
import secrets
import threading

import pytest

from appliance.format.journal import Point
from appliance.journal.recording import RecordingJournalFiles, crash_image
from tests.integration.journal_helpers import Driver

from . import counts
from .journal_oracle import Oracle

pytestmark = pytest.mark.faults
KEY = secrets.token_bytes(32)
STEPS_PER_THREAD = 12
MODES = ("durable", "all")
RANDOM_MODES = ("torn", "garbage", "drop")
RANDOM_STATES = 60


class Run:
    """A recorded adaptation run: the op log, when each step was acked, the checkpoint and its commit."""

    def __init__(self) -> None:
        self.files = RecordingJournalFiles()
        self.driver = Driver(self.files, KEY, group_commit_s=0.004)
        self.driver.recover()
        self.acks: list[tuple[int, int]] = []  # (ops logged when acked, index)
        self.point: Point | None = None
        self.checkpoint_state = 0
        self.committed_at = 10**9  # op count after which the checkpoint is durable in a slot
        self._record()

    def _client(self, n: int) -> None:
        for _ in range(n):
            index = self.driver.step()
            self.acks.append((len(self.files.ops), index))

    def _record(self) -> None:
        self._two_clients()
        with self.driver.lock:  # an export captures the state: rotation under the model lock
            self.point = self.driver.journal.capture_point()
            self.checkpoint_state = self.point.index
        self._two_clients()
        self.committed_at = len(self.files.ops)  # persist committed it and told the service
        self.driver.journal.checkpointed(self.point)
        self._two_clients()
        self.driver.journal.close()

    def _two_clients(self) -> None:
        threads = [threading.Thread(target=self._client, args=(STEPS_PER_THREAD // 2,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def acked_before(self, cut: int) -> int:
        return max((index for seen, index in self.acks if seen <= cut), default=0)


@pytest.fixture(scope="module")
def run() -> Run:
    return Run()


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle()


def _boot(run: Run, oracle: Oracle, image: dict[str, bytes], cut: int) -> tuple[int, str]:
    """Restore (checkpoint if committed before the cut, else base) and replay; (K, state digest)."""
    d = Driver(RecordingJournalFiles(image), KEY)
    if cut >= run.committed_at:
        assert run.point is not None
        _advance_to(d, run.checkpoint_state)
        rec = d.recover(run.point)
    else:
        rec = d.recover()
    return rec.last_index, d.digest()


def _advance_to(d: Driver, k: int) -> None:
    from appliance.journal import step as steps
    from appliance.service import loader
    from tests.integration.journal_helpers import batch

    with steps.deterministic(1):
        for i in range(1, k + 1):
            x, y = batch(i)
            with steps.seeded(i):
                loader.adapt(d.model, x, y)


def _check(run: Run, oracle: Oracle, image: dict[str, bytes], cut: int, what: str) -> None:
    k, digest = _boot(run, oracle, image, cut)
    acked = run.acked_before(cut)
    assert k >= acked, f"{what}: step {acked} was acknowledged but the boot replayed only to {k}"
    assert digest == oracle.digest(k), f"{what}: the state after replay to {k} differs from the oracle's"


@pytest.mark.parametrize("mode", MODES)
def test_power_cut_at_every_journal_operation_loses_no_acknowledged_step(run: Run, oracle: Oracle, mode: str) -> None:
    for cut in range(len(run.files.ops) + 1):
        _check(run, oracle, crash_image(run.files.ops, cut, None, mode), cut, f"{mode} cut after op {cut}")
    counts.add(f"journal.states.{mode}", len(run.files.ops) + 1)


def test_torn_garbage_and_dropped_unsynced_tails_lose_no_acknowledged_step(run: Run, oracle: Oracle) -> None:
    rng = random.Random(17)
    for n in range(RANDOM_STATES):
        mode, cut = RANDOM_MODES[n % 3], rng.randrange(len(run.files.ops) + 1)
        _check(run, oracle, crash_image(run.files.ops, cut, rng, mode), cut, f"{mode} cut after op {cut} (#{n})")
    counts.add("journal.states.torn", RANDOM_STATES)


def test_a_second_cut_during_recovery_still_loses_nothing(run: Run, oracle: Oracle) -> None:
    """Boot (replay, cut tails, start the next lineage), crash again at every point of that boot, boot again."""
    rng = random.Random(5)
    n = 0
    for cut in sorted(rng.sample(range(len(run.files.ops) + 1), 8)):
        image = crash_image(run.files.ops, cut, rng, "torn")
        acked = run.acked_before(cut)
        files = RecordingJournalFiles(image)
        d = Driver(files, KEY)
        if cut >= run.committed_at:
            _advance_to(d, run.checkpoint_state)
            d.recover(run.point)
        else:
            d.recover()
        for recut in range(len(files.ops) + 1):
            again = crash_image(files.ops, recut, None, "durable", initial=image)
            _check(run, oracle, again, cut, f"cut {cut}, recovery cut {recut}")
            n += 1
        assert acked >= 0
    counts.add("journal.recovery.recrash", n)
