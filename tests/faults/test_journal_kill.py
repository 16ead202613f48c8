"""kill -9 of a real adapting process at random moments: no acknowledged step is lost, nothing is invented.

Each round starts ``journal_child`` on the same journal directory (it replays what the previous
rounds left, then adapts), kills its whole process group with SIGKILL at a random moment, and
boots the journal here: the replayed state must be bit-identical to the oracle's state after
step K, with K at least the last step the child acknowledged. Power cuts (unsynced data lost,
torn tails) are the crash model's job (``test_journal_crash``); a kill keeps the page cache.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.journal.files import LocalJournalFiles
from tests.integration.journal_helpers import Driver

from . import counts
from .journal_oracle import Oracle

pytestmark = pytest.mark.faults
ROUNDS = int(os.environ.get("APPLIANCE_JOURNAL_KILLS", "50"))  # issue 17: >= 50 cuts per CI run
ROOT = Path(__file__).resolve().parents[2]


def _round(directory: Path, keyfile: Path, rng: random.Random) -> tuple[int, int]:
    """One child life: (index it booted at, last index it acknowledged)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.journal_child", str(directory), str(keyfile)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert child.stdout is not None
    first = child.stdout.readline().split()
    assert first and first[0] == "BOOT", f"the child did not boot: {first}"
    time.sleep(rng.uniform(0.05, 0.5))
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    acked = [int(line.split()[1]) for line in child.stdout.read().splitlines() if line.startswith("ACK ")]
    return int(first[1]), max(acked, default=int(first[1]))


def test_kill_9_at_random_moments_loses_no_acknowledged_step(tmp_path: Path) -> None:
    keyfile = tmp_path / "journal.key"
    keyfile.write_bytes(secrets.token_bytes(32))
    directory = tmp_path / "journal"
    rng, oracle = random.Random(), Oracle()
    for n in range(ROUNDS):
        booted_at, acked = _round(directory, keyfile, rng)
        here = Driver(LocalJournalFiles(directory), keyfile.read_bytes())
        rec = here.recover()
        here.journal.close()
        assert rec.last_index >= acked >= booted_at, f"round {n}: acked {acked}, replayed to {rec.last_index}"
        assert here.digest() == oracle.digest(rec.last_index), f"round {n}: state after {rec.last_index} differs"
        assert rec.stopped is None, rec.stopped
    counts.add("journal.kills", ROUNDS)
