"""The written-ahead journal (version 3 segments, docs/design.md §15.1-15.3): a step's record is
durable before its ack and its fsync overlaps the step; the step's result follows in an outcome
record. What a cut, damage or a raising step does to that pair, and old (version 1) segments
still replaying bit-identically, with their results checked as before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from appliance.format.journal import KIND_OUTCOME, KIND_STEP, StepOutcome, StepPayload, encode_record
from appliance.journal import step as steps
from appliance.journal.files import LocalJournalFiles
from appliance.service import loader
from tests.integration.journal_helpers import Driver, oracle
from tests.integration.test_journal_replay import KEY, _boot, _read, _records, _run, _segments

pytestmark = pytest.mark.integration
GOLDEN_V1 = Path(__file__).parents[1] / "golden" / "journal-v1"


def test_new_segments_are_version_3_with_one_outcome_right_after_each_step(tmp_path: Path) -> None:
    _run(tmp_path, 4)
    seg = _read(_segments(tmp_path)[0])
    assert seg.header is not None and seg.header.ahead and b'"version":3' in _raw_header(tmp_path)
    assert [r.index for r in seg.records] == [1, 2, 3, 4] and sorted(seg.outcomes) == [1, 2, 3, 4]
    for r in seg.records:
        assert seg.outcomes[r.index].offset == r.end  # the outcome follows its own step record
        assert set(StepOutcome.from_bytes(seg.outcomes[r.index].payload).result or {}) >= {"loss"}


def _raw_header(directory: Path) -> bytes:
    return _segments(directory)[0].read_bytes()[:400]


def test_a_cut_that_loses_only_the_last_outcome_replays_that_step_unchecked(tmp_path: Path) -> None:
    _run(tmp_path, 5)
    seg = _segments(tmp_path)[0]
    last = _records(seg)[-1]
    seg.write_bytes(seg.read_bytes()[: last.end + 9])  # the outcome record torn after 9 bytes
    booted = _boot(tmp_path)
    rec = booted.journal.recovery
    assert rec is not None and rec.replayed == 5 and booted.digest() == oracle(5) and rec.stopped is None
    assert rec.cut and rec.cut[0]["offset"] == last.end  # only the torn outcome is cut off


def test_an_authentic_outcome_that_disagrees_with_the_replayed_step_stops_replay_as_diverged(tmp_path: Path) -> None:
    _run(tmp_path, 3)
    seg = _segments(tmp_path)[0]
    parsed = _read(seg)
    third = parsed.outcomes[3]
    wrong = encode_record(KEY, KIND_OUTCOME, third.lineage, 3, StepOutcome(result={"loss": 1.0, "step": 3}).to_bytes())
    seg.write_bytes(seg.read_bytes()[: third.offset] + wrong)
    rec = _boot(tmp_path).journal.recovery
    assert rec is not None and rec.stopped is not None and rec.stopped["kind"] == "diverged"
    assert rec.stopped["index"] == 3 and "not deterministic" in rec.stopped["detail"]


def test_an_outcome_spliced_away_from_its_step_is_foreign_and_stops_the_replay(tmp_path: Path) -> None:
    _run(tmp_path, 3)
    seg = _segments(tmp_path)[0]
    parsed = _read(seg)
    second = parsed.outcomes[2]
    spliced = encode_record(KEY, KIND_OUTCOME, second.lineage, 2, second.payload)  # authentic, but after step 3
    seg.write_bytes(seg.read_bytes() + spliced)
    booted = _boot(tmp_path)
    rec = booted.journal.recovery
    assert rec is not None and rec.replayed == 3 and booted.digest() == oracle(3)
    assert (
        rec.stopped is not None and rec.stopped["kind"] == "foreign" and "outcome of record 2" in rec.stopped["detail"]
    )


def test_a_step_record_with_an_outcome_kind_inside_a_version_1_segment_is_foreign(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN_V1, tmp_path, dirs_exist_ok=True)
    seg = _segments(tmp_path)[0]
    key = bytes.fromhex((tmp_path / "KEY.hex").read_text())
    lineage = _records(seg, key)[-1].lineage
    seg.write_bytes(seg.read_bytes() + encode_record(key, KIND_OUTCOME, lineage, 3, b'{"error":null,"result":{}}'))
    d = Driver(LocalJournalFiles(tmp_path), key)
    rec = d.recover()
    assert rec.replayed == 3 and rec.stopped is not None and rec.stopped["kind"] == "foreign"


def test_a_step_that_raises_live_is_recorded_and_replay_reproduces_the_same_state(tmp_path: Path) -> None:
    d = Driver(LocalJournalFiles(tmp_path), KEY)
    d.recover()
    d.step()
    with pytest.raises(RuntimeError), d.lock:  # a batch of the wrong width: the model's own error
        before = loader.adaptation_step(d.model)

        def bad() -> dict[str, float]:
            with steps.deterministic(1), steps.seeded(99):
                return loader.adapt(d.model, torch.ones(8, 3), torch.ones(8, 4)) or {}

        d.journal.record_step(99, before, torch.ones(8, 3), torch.ones(8, 4), bad)
    d.step(2)
    d.journal.close()
    live = d.digest()
    seg = _read(_segments(tmp_path)[0])
    assert StepOutcome.from_bytes(seg.outcomes[2].payload).error == "RuntimeError"
    booted = _boot(tmp_path)
    rec = booted.journal.recovery
    assert rec is not None and rec.replayed == 3 and rec.stopped is None and booted.digest() == live


def test_an_acknowledged_step_never_waits_for_its_outcome_and_the_outcome_is_synced_with_the_next(
    tmp_path: Path,
) -> None:
    d = Driver(LocalJournalFiles(tmp_path), KEY)
    d.recover()
    writer = d.journal.writer
    assert writer is not None
    d.step()
    syncs = writer.syncs
    d.step()
    assert writer.syncs - syncs == 1  # one fsync per step: the step's record, the previous outcome with it
    d.journal.close()  # the close syncs the last outcome
    assert sorted(_read(_segments(tmp_path)[0]).outcomes) == [1, 2]


def test_the_version_1_golden_segment_replays_bit_identically_with_its_results_checked(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN_V1, tmp_path, dirs_exist_ok=True)
    key = bytes.fromhex((tmp_path / "KEY.hex").read_text())
    seg = _read(_segments(tmp_path)[0], key)
    assert seg.header is not None and not seg.header.ahead and not seg.outcomes  # results inside the step records
    assert all(StepPayload.from_bytes(r.payload).result for r in seg.records)
    d = Driver(LocalJournalFiles(tmp_path), key)
    rec = d.recover()
    assert rec.replayed == 3 and rec.stopped is None and d.digest() == oracle(3)


def test_a_version_1_record_whose_result_disagrees_still_stops_as_diverged(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN_V1, tmp_path, dirs_exist_ok=True)
    key = bytes.fromhex((tmp_path / "KEY.hex").read_text())
    seg = _segments(tmp_path)[0]
    third = _records(seg, key)[2]
    p = StepPayload.from_bytes(third.payload)
    changed = StepPayload(p.seed, p.step_before, p.tensors, {**p.result, "loss": -1.0})
    seg.write_bytes(
        seg.read_bytes()[: third.offset] + encode_record(key, KIND_STEP, third.lineage, 3, changed.to_bytes())
    )
    d = Driver(LocalJournalFiles(tmp_path), key)
    rec = d.recover()
    assert rec.stopped is not None and rec.stopped["kind"] == "diverged" and rec.stopped["index"] == 3
    assert d.digest() == oracle(3)  # the step ran; replay stops after it and says so
