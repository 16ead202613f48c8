"""`appliance journal check` walks the journal with replay's own rules (trial 4, N4).

A real node (``node-init``, seeded), its model service in process with a journal: adaptation
steps are journaled (version 3: step record, then its outcome record), then records are removed
or spliced the way the trial did. The check must say where boot's replay stops, and why, with
exit 51; the service's next start must stop at exactly that place and report it (what boot shows).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from appliance.cli.main import main
from appliance.errors import JournalForgedError
from appliance.events import event_fields, read_events
from appliance.format.handoff import Admit, Phase
from appliance.format.journal import KIND_STEP, encode_record
from appliance.node.config import NodeConfig
from appliance.service import loader
from appliance.service.runtime import ServiceRuntime
from tests.integration.journal_helpers import batch
from tests.integration.node_fixtures import handoff, node, with_changes
from tests.integration.test_journal_replay import _read

pytestmark = pytest.mark.integration
__all__ = ["node"]
STEPS = 6  # the trial's demo journal: 5 steps, the power cut, one more


@pytest.fixture
def journaled(node: NodeConfig, tmp_path: Path) -> tuple[NodeConfig, Path]:
    """A node whose service journaled ``STEPS`` steps and died (no persist): its config and node.json."""
    config = with_changes(node, journal_dir=str(tmp_path / "journal"))
    path = tmp_path / "node-j.json"
    path.write_bytes(config.to_bytes())
    handoff(config, Admit.SELF)
    rt = _up(config)
    for i in range(1, STEPS + 1):
        x, y = batch(i)
        rt.adapt(x.tolist(), y.tolist())
    return config, path


def _up(config: NodeConfig) -> ServiceRuntime:
    rt = ServiceRuntime(config)
    rt.bring_up()
    assert rt.phase in (Phase.RESTORED, Phase.SERVING), rt.error
    return rt


def _segment(config: NodeConfig) -> Path:
    (seg,) = sorted(Path(config.journal_dir).glob("seg-*.ajl"))
    return seg


def _remove(config: NodeConfig, index: int, *, step: bool) -> None:
    """Cut step ``index``'s outcome record (and its step record too with ``step``) out of the segment."""
    seg = _segment(config)
    parsed, data = _read(seg, _key(config)), seg.read_bytes()
    outcome = parsed.outcomes[index]
    start = next(r for r in parsed.records if r.index == index).offset if step else outcome.offset
    seg.write_bytes(data[:start] + data[outcome.end :])


def _key(config: NodeConfig) -> bytes:
    from appliance.journal.keyfile import load_journal_key

    return load_journal_key(config.journal_key_file())


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object], str]:
    code = main(["journal", "check", "--config", str(path), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert main(["journal", "check", "--config", str(path)]) == code
    return code, data, capsys.readouterr().out


def _replayed_by_the_next_start(config: NodeConfig) -> dict[str, object]:
    rt = _up(config)
    assert rt.replay is not None and rt.model is not None
    assert loader.adaptation_step(rt.model) == rt.replay["last_index"]
    return rt.replay


def test_a_clean_journal_checks_clean_from_the_newest_checkpoint(
    journaled: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = journaled
    code, data, text = _check(path, capsys)
    replay = data["replay"]
    assert code == 0 and data["error"] is None and isinstance(replay, dict)
    assert (replay["records"], replay["first"], replay["last"], replay["stopped"]) == (STEPS, 1, STEPS, None)
    assert data["start"]["from"] == "checkpoint" and data["start"]["checkpoint"] == {"slot": "A", "generation": 1}  # type: ignore[index]
    assert "replay from checkpoint A/1" in text and f"{STEPS} records 1..{STEPS}" in text and "STOP" not in text


def test_trial_4_n4_a_removed_step_record_is_a_gap_where_boot_stops(
    journaled: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The trial: step 3's step record and its outcome removed (records 1, 2, 4, 5, 6); check said "clean"."""
    config, path = journaled
    _remove(config, 3, step=True)
    code, data, text = _check(path, capsys)
    stop = data["replay"]["stopped"]  # type: ignore[index]
    assert code == JournalForgedError.exit_code and data["error"]["exit_code"] == 51  # type: ignore[index]
    assert (stop["kind"], stop["index"]) == ("gap", 3) and data["replay"]["records"] == 2  # type: ignore[index]
    assert data["replay"]["set_aside_records"] == 3  # type: ignore[index]  # steps 4, 5, 6
    assert f"STOP gap at record 3 of {_segment(config).name}: record 3 missing" in text
    replay = _replayed_by_the_next_start(config)  # the service's replay stops where the check said
    assert replay["replayed"] == 2 and replay["set_aside_records"] == 3 and replay["retired_dir"]
    assert {k: replay["stopped"][k] for k in ("kind", "index", "segment")} == {  # type: ignore[index]
        k: stop[k] for k in ("kind", "index", "segment")
    }
    stopped = read_events(config.event_log, frozenset({"journal.stopped"}))
    assert [event_fields(e)["kind"] for e in stopped] == ["gap"]
    assert list((Path(config.journal_dir) / "retired").iterdir()), "set aside as evidence"


def test_trial_4_n4_a_removed_outcome_record_in_the_middle_is_a_gap_too(
    journaled: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The trial: only step 3's outcome record removed; check printed "5 records 1..5", exit 0."""
    config, path = journaled
    _remove(config, 3, step=False)
    code, data, text = _check(path, capsys)
    stop = data["replay"]["stopped"]  # type: ignore[index]
    assert code == 51 and (stop["kind"], stop["index"]) == ("gap", 3)
    assert "the outcome record of step 3 is missing: step record 4 follows it directly" in stop["detail"]
    assert data["replay"]["set_aside_records"] == 4 and "STOP gap at record 3" in text  # type: ignore[index]
    replay = _replayed_by_the_next_start(config)
    assert replay["replayed"] == 2 and replay["stopped"]["kind"] == "gap" and replay["set_aside_records"] == 4  # type: ignore[index]


def test_a_spliced_record_of_another_lineage_is_foreign(
    journaled: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = journaled
    with open(_segment(config), "ab") as f:  # authentic (the node's key), but another lineage's
        f.write(encode_record(_key(config), KIND_STEP, secrets.token_bytes(16), STEPS + 1, b"\x00" * 64))
    code, data, _ = _check(path, capsys)
    assert code == 51 and data["replay"]["stopped"]["kind"] == "foreign"  # type: ignore[index]
    assert _replayed_by_the_next_start(config)["stopped"]["kind"] == "foreign"  # type: ignore[index]


def test_a_torn_tail_is_a_cut_not_a_stop_and_the_last_step_may_lack_its_outcome(
    journaled: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = journaled
    seg = _segment(config)
    last = _read(seg, _key(config)).records[-1]
    seg.write_bytes(seg.read_bytes()[: last.end + 9])  # the last outcome torn (a power cut between the two)
    code, data, text = _check(path, capsys)
    assert code == 0 and data["replay"]["stopped"] is None and data["replay"]["records"] == STEPS  # type: ignore[index]
    assert "STOP torn" in text and "replay from checkpoint A/1" in text
    replay = _replayed_by_the_next_start(config)
    assert replay["stopped"] is None and replay["replayed"] == STEPS and replay["cut"] == 1


def test_after_a_boot_the_new_empty_segment_reads_as_no_records(
    journaled: tuple[NodeConfig, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = journaled
    _up(config)
    code, _, text = _check(path, capsys)
    assert code == 0 and text.count(": 0 records\n") == 1 and "None" not in text
