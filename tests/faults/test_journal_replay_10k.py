"""Replay of 10,000 adaptation steps of the built-in model: measured, and bit-identical to the live state.

The live run journals 10,000 steps (in memory: this measures replay, not the disk); a boot on
a fresh model replays them all. The seconds are printed in the fault-suite table
(``journal.replay_10k_ms``); docs/design.md §15.4 quotes them. No time limit is asserted
(speed goals live in bench/), only that every step replayed and the state is the live one.
"""

from __future__ import annotations

import secrets
import time

import pytest

from appliance.journal.recording import RecordingJournalFiles
from tests.integration.journal_helpers import Driver

from . import counts

pytestmark = pytest.mark.faults
STEPS = 10_000


def test_replay_of_10000_steps_is_bit_identical_and_measured() -> None:
    key = secrets.token_bytes(32)
    files = RecordingJournalFiles()
    live = Driver(files, key)
    live.recover()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        live.step()
    live_s = time.perf_counter() - t0
    live.journal.close()
    booted = Driver(RecordingJournalFiles({k: bytes(v) for k, v in files.files.items()}), key)
    rec = booted.recover()
    assert rec.replayed == STEPS and rec.stopped is None and rec.cut == []
    assert booted.digest() == live.digest()
    counts.add("journal.replay_10k_ms", round(rec.seconds * 1000))
    counts.add("journal.live_10k_ms", round(live_s * 1000))
    print(
        f"replayed {STEPS} steps in {rec.seconds:.2f} s ({rec.seconds / STEPS * 1e3:.3f} ms/step); live {live_s:.2f} s"
    )
