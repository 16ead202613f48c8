"""persist_interval "auto": measured from the node's own events, shown by `appliance report --config`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli.main import main
from appliance.format.interval import IntervalInputs, choose
from appliance.node.config import NodeConfig, load_config
from appliance.persist.interval import measure, persist_interval
from tests.integration.node_fixtures import node, with_changes

pytestmark = pytest.mark.integration
__all__ = ["node"]


def _log(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _events(path: Path) -> None:
    """Two days, three boots (two interruptions), exports 100 steps apart every 100 s, three persists."""
    t0 = 1_700_000_000.0
    rows: list[dict[str, object]] = [
        {"event": "boot.started", "ts_unix": t0 + d, "fields": {}} for d in (0, 86400, 172800)
    ]
    rows += [{"event": "state.exported", "ts_unix": t0 + 100 * k, "fields": {"step": 100 * k, "pause_s": 0.25}}
             for k in range(1, 4)]  # fmt: skip
    rows += [{"event": "persist.committed", "ts_unix": t0 + 100 * k, "fields": {"seconds": 1.75, "written_bytes": 8192}}
             for k in range(1, 4)]  # fmt: skip
    rows += [
        {
            "event": "journal.replayed",
            "ts_unix": t0 + 86400,
            "fields": {"records": 500, "seconds": 1.0, "bytes": 500_000},
        }
    ]
    _log(path, rows)


def test_auto_interval_is_young_daly_over_the_measured_costs(node: NodeConfig, tmp_path: Path) -> None:
    log = tmp_path / "ev.jsonl"
    _events(log)
    config = with_changes(node, event_log=str(log), persist_auto=True, journal_dir=str(tmp_path / "j"))
    inputs, sources = measure(config)
    # hand-computed: C = 0.25 + 1.75 = 2 s; M = 172800 s / 2 interruptions = 86400 s;
    # sqrt(2 * 2 * 86400) = 587.88 s; 1 step/s * 2 ms/record -> max replay 30 s allows 15000 s.
    assert (inputs.capture_pause_s, inputs.persist_s, inputs.mtbf_s) == (0.25, 1.75, 86400.0)
    assert inputs.steps_per_s == 1.0 and inputs.replay_s_per_record == 0.002 and inputs.record_bytes == 1000.0
    assert all(v == "measured" for v in sources.values())
    assert persist_interval(config) == pytest.approx(587.877538, rel=1e-6)
    assert persist_interval(with_changes(config, persist_auto=False)) == config.persist_interval


def test_report_shows_the_chosen_interval_and_the_cost_of_a_failure(
    node: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "ev.jsonl"
    _events(log)
    path = tmp_path / "node-auto.json"
    obj = json.loads(with_changes(node, event_log=str(log), journal_dir=str(tmp_path / "j")).to_bytes())
    obj["persist_interval"] = "auto"
    path.write_text(json.dumps(obj))
    assert load_config(path).persist_auto
    assert main(["report", node.store, "--config", str(path), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["persist_interval"]
    assert p["mode"] == "auto" and p["interval_s"] == pytest.approx(587.878, abs=1e-3)
    assert p["expected_acknowledged_steps_lost"] == 0 and p["choice"]["bound"] == "young-daly"
    assert p["choice"]["expected_replay_s"] == pytest.approx(587.877538 / 2 * 0.002, rel=1e-5)
    assert main(["report", node.store, "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "persist interval: auto 587.9 s (bound: young-daly" in text and "no acknowledged step lost" in text


def test_without_observations_the_priors_are_used_and_said(node: NodeConfig, tmp_path: Path) -> None:
    config = with_changes(node, event_log=str(tmp_path / "none.jsonl"), persist_auto=True)
    inputs, sources = measure(config)
    assert set(sources.values()) == {"prior"}
    assert choose(inputs).interval_s == 5.0  # a zero cost alone would mean the minimum ...
    assert persist_interval(config) == config.persist_interval  # ... so until a persist is observed: the fixed value
    assert isinstance(inputs, IntervalInputs)
