"""Replay of the adaptation journal: bit-identical states, and every kind of damaged journal handled."""

from __future__ import annotations

import random
import secrets
import threading
from pathlib import Path

import pytest

from appliance.format.journal import KIND_STEP, Point, Record, encode_record, parse_segment_name
from appliance.format.journal_walk import Segment
from appliance.journal import step as steps
from appliance.journal.files import LocalJournalFiles
from appliance.journal.reader import read_segment
from appliance.journal.recording import RecordingJournalFiles
from appliance.service import loader
from tests.integration.journal_helpers import Driver, batch, oracle

pytestmark = pytest.mark.integration
KEY = secrets.token_bytes(32)


def _run(directory: Path, n: int, group_commit_s: float = 0.0) -> Driver:
    d = Driver(LocalJournalFiles(directory), KEY, group_commit_s)
    d.recover()
    for _ in range(n):
        d.step()
    d.journal.close()
    return d


def _boot(directory: Path, point: Point | None = None) -> Driver:
    d = Driver(LocalJournalFiles(directory), KEY)
    d.recover(point)
    return d


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.ajl"))


def _read(seg: Path, key: bytes = KEY) -> Segment:
    first, lineage = parse_segment_name(seg.name) or (0, b"")
    return read_segment(seg.name, first, lineage, seg.read_bytes(), key)


def _records(seg: Path, key: bytes = KEY) -> tuple[Record, ...]:
    """The segment's step records (its outcome records are in ``_read(seg).outcomes``)."""
    return _read(seg, key).records


def test_replay_after_a_cut_is_bit_identical_to_the_state_after_the_last_acknowledged_step(tmp_path: Path) -> None:
    live = _run(tmp_path, 12)
    booted = _boot(tmp_path)
    assert booted.journal.recovery is not None and booted.journal.recovery.replayed == 12
    assert booted.digest() == live.digest() == oracle(12)


def test_the_step_counter_continues_exactly_after_a_replay_and_a_second_boot(tmp_path: Path) -> None:
    _run(tmp_path, 5)
    second = _boot(tmp_path)
    assert loader.adaptation_step(second.model) == 5
    for _ in range(4):
        second.step()
    second.journal.close()
    third = _boot(tmp_path)  # follows the first lineage into the one the second boot started
    assert loader.adaptation_step(third.model) == 9 and third.digest() == oracle(9)


def test_a_torn_tail_is_cut_at_the_last_good_record_with_an_event_count(tmp_path: Path) -> None:
    _run(tmp_path, 6)
    seg = _segments(tmp_path)[0]
    seg.write_bytes(seg.read_bytes()[: _records(seg)[-1].end - 7])  # the last step record lost its last 7 bytes
    booted = _boot(tmp_path)
    rec = booted.journal.recovery
    assert rec is not None and rec.replayed == 5 and booted.digest() == oracle(5)
    assert rec.cut and rec.cut[0]["kind"] == "cut" and rec.cut[0]["bytes"] > 0
    assert list((tmp_path / "retired").iterdir()), "the cut-off bytes are kept aside as evidence"


def test_a_flipped_byte_in_the_middle_cuts_there_and_nothing_after_it_replays(tmp_path: Path) -> None:
    _run(tmp_path, 8)
    seg = _segments(tmp_path)[0]
    fourth = _records(seg)[3]
    data = bytearray(seg.read_bytes())
    data[(fourth.offset + fourth.end) // 2] ^= 0x40  # inside step record 4 (CRC-covered)
    seg.write_bytes(bytes(data))
    booted = _boot(tmp_path)
    rec = booted.journal.recovery
    assert rec is not None and rec.replayed == 3 and booted.digest() == oracle(3) and rec.stopped is None
    assert rec.cut and rec.cut[0]["offset"] == fourth.offset


def test_a_flipped_byte_anywhere_never_replays_the_damaged_record_or_invents_a_state(tmp_path: Path) -> None:
    """Property over byte positions: whatever record a flip lands in (header, step, its outcome, a
    CRC or a MAC), replay ends on a state of the oracle and never runs a step whose record is damaged;
    a damaged outcome at most leaves its (whole) step unchecked."""
    live = tmp_path / "live"
    _run(live, 6)
    seg = _segments(live)[0]
    clean, parsed = seg.read_bytes(), _read(seg)
    owners = [(r.offset, r.end, r.index - 1) for r in parsed.records]  # a damaged step: at most its predecessor
    owners += [(o.offset, o.end, o.index) for o in parsed.outcomes.values()]  # a damaged outcome: its step
    rng = random.Random(17)
    for pos in sorted(rng.sample(range(len(clean)), 40)):
        trial = tmp_path / f"flip-{pos}"
        trial.mkdir()
        data = bytearray(clean)
        data[pos] ^= 1 << rng.randrange(8)
        (trial / seg.name).write_bytes(bytes(data))
        booted = _boot(trial)
        rec = booted.journal.recovery
        assert rec is not None
        bound = next((most for start, end, most in owners if start <= pos < end), 0)  # else: the header
        assert rec.replayed <= bound, (pos, rec.replayed, bound)
        assert booted.digest() == oracle(rec.replayed), pos


def test_a_forged_record_stops_the_replay_and_says_so(tmp_path: Path) -> None:
    _run(tmp_path, 4)
    seg = _segments(tmp_path)[0]
    lineage = bytes.fromhex(seg.name.split("-")[2].split(".")[0])
    with open(seg, "ab") as f:  # an attacker who can write the journal but lacks the key
        f.write(encode_record(secrets.token_bytes(32), KIND_STEP, lineage, 5, b"\x00" * 64))
    booted = _boot(tmp_path)
    rec = booted.journal.recovery
    assert rec is not None and rec.replayed == 4 and booted.digest() == oracle(4)
    assert rec.stopped is not None and rec.stopped["kind"] == "forged" and rec.stopped["index"] == 5


def test_records_of_another_generation_are_not_replayed(tmp_path: Path) -> None:
    _run(tmp_path, 3)
    booted = Driver(LocalJournalFiles(tmp_path), KEY)
    rec = booted.recover(digest="e" * 64)  # a checkpoint whose content the journal does not continue
    assert rec.replayed == 0 and booted.digest() == oracle(0)
    assert rec.retired, "the other checkpoint's segments are set aside, not replayed"


def test_a_record_spliced_from_another_lineage_is_foreign_and_stops_the_replay(tmp_path: Path) -> None:
    _run(tmp_path, 3)
    seg = _segments(tmp_path)[0]
    with open(seg, "ab") as f:  # authentic (the node's key) but from another lineage
        f.write(encode_record(KEY, KIND_STEP, b"\x07" * 16, 4, b"\x00" * 64))
    rec = _boot(tmp_path).journal.recovery
    assert rec is not None and rec.replayed == 3 and rec.stopped is not None and rec.stopped["kind"] == "foreign"


def test_a_checkpoint_at_a_journal_point_replays_only_what_follows_it_and_trims_what_it_covers(tmp_path: Path) -> None:
    d = Driver(LocalJournalFiles(tmp_path), KEY)
    d.recover()
    for _ in range(5):
        d.step()
    with d.lock:
        point = d.journal.capture_point()  # what an export captured at step 5
    checkpoint_state = d.digest()
    for _ in range(3):
        d.step()
    removed = d.journal.checkpointed(point)
    assert len(removed) == 1 and len(_segments(tmp_path)) == 1
    d.journal.close()
    booted = Driver(LocalJournalFiles(tmp_path), KEY)
    booted_model_at_5 = _boot_from_state_5(booted)
    assert booted_model_at_5 == checkpoint_state
    rec = booted.recover(point)
    assert rec.replayed == 3 and booted.digest() == oracle(8)


def _boot_from_state_5(d: Driver) -> str:
    """Put the driver's model into the state after step 5 (what the checkpoint at that point restores)."""
    with steps.deterministic(1):
        for i in range(1, 6):
            x, y = batch(i)
            with steps.seeded(i):
                loader.adapt(d.model, x, y)
    return d.digest()


class _SlowFirstSync(RecordingJournalFiles):
    """Fault-injection seam: the first step record's fsync lasts until every client has appended
    (at most 5 s), as a slow disk would make it; the writer must then share one sync among them.
    Without the gate a loaded 2-core machine can serialise the clients and no group ever forms."""

    def __init__(self, clients: int) -> None:
        super().__init__()
        self.clients, self.gated, self.changed = clients, False, threading.Condition()

    def append(self, name: str, data: bytes) -> None:
        with self.changed:
            super().append(name, data)
            self.changed.notify_all()

    def sync(self, name: str) -> None:
        if not self.gated and self._step_appends():
            self.gated = True
            with self.changed:
                self.changed.wait_for(lambda: self._step_appends() >= self.clients, timeout=5.0)
        super().sync(name)

    def _step_appends(self) -> int:
        return sum(op.kind == "append" and op.data[4] == KIND_STEP for op in self.ops)


def test_group_commit_acknowledges_only_synced_records_and_shares_syncs(tmp_path: Path) -> None:
    files = _SlowFirstSync(clients=4)
    d = Driver(files, KEY, group_commit_s=0.02)
    d.recover()
    acked: list[tuple[int, int]] = []

    def worker() -> None:
        for _ in range(5):
            index = d.step()
            acked.append((index, len(files.ops)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d.journal.close()
    for index, seen in acked:  # when a step was acknowledged, its record had been appended and then synced
        appended = next(i for i, op in enumerate(files.ops)
                        if op.kind == "append" and op.data[4] == KIND_STEP and _index_of(op.data) == index)  # fmt: skip
        assert any(op.kind == "sync" for op in files.ops[appended:seen]), f"record {index} acked before its fsync"
    assert d.journal.writer is not None and d.journal.writer.syncs < 20, "20 steps share fewer syncs (group commit)"


def _index_of(record: bytes) -> int:
    return int.from_bytes(record[24:32], "little")
