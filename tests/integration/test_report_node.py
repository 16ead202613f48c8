"""`appliance report` on a real node: the restores its service really did are the observed boots (trial 4, N5).

The node is built with ``appliance node-init`` and seeded; its model service restores generation 1
twice in process (``ServiceRuntime.bring_up``: the verified restore, then the real
``restore.finished`` event in the node's log). Before the fix the report looked for ``seconds`` at
the top level of each record (events keep it under ``fields``) and read the production log even
with ``--config``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli.main import main
from appliance.events import event_fields, read_events
from appliance.format.handoff import Admit, Phase
from appliance.node.config import NodeConfig
from appliance.service.runtime import ServiceRuntime
from tests.integration.node_fixtures import handoff, node

pytestmark = pytest.mark.integration
__all__ = ["node"]


def _restore(config: NodeConfig) -> None:
    rt = ServiceRuntime(config)
    rt.bring_up()
    assert rt.phase in (Phase.RESTORED, Phase.SERVING), rt.error


@pytest.fixture
def restored(node: NodeConfig) -> NodeConfig:
    """The node after two real restores of A/1 (two ``restore.finished`` events in its own log)."""
    handoff(node, Admit.SELF)
    _restore(node)
    _restore(node)
    assert len(read_events(node.event_log, frozenset({"restore.finished"}))) == 2
    return node


def test_trial_4_n5_report_with_the_nodes_log_shows_the_observed_restores(
    restored: NodeConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trial's exact command, from the node's directory: `appliance report store --events log/events.jsonl`."""
    monkeypatch.chdir(Path(restored.store).parent)
    assert main(["report", "store", "--events", "log/events.jsonl"]) == 0
    text = capsys.readouterr().out
    assert "no boot observed yet" not in text
    assert "observed at boot (log/events.jsonl):" in text
    after = text.split("observed at boot (log/events.jsonl):\n", 1)[1].splitlines()
    assert [line.split()[1] for line in after[:2]] == ["A/1", "A/1"] and all(line.endswith(" s") for line in after[:2])


def test_report_json_carries_each_restore_from_the_event_fields(
    restored: NodeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", restored.store, "--events", restored.event_log, "--json"]) == 0
    observed = json.loads(capsys.readouterr().out)["observed"]
    logged = [event_fields(e) for e in read_events(restored.event_log, frozenset({"restore.finished"}))]
    assert [o["seconds"] for o in observed] == [f["seconds"] for f in reversed(logged)]
    assert all(o["slot"] == "A" and o["generation"] == 1 and o["raw_bytes"] > 0 and o["ts"] for o in observed)


def test_report_with_config_reads_the_event_log_node_json_names(
    restored: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "other-events.jsonl"
    elsewhere.write_text("")
    monkeypatch.setenv("APPLIANCE_EVENT_LOG", str(elsewhere))  # node.json's log wins over the environment's
    config = Path(restored.store).parent / "node.json"
    assert main(["report", restored.store, "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == restored.event_log and len(report["observed"]) == 2
    assert "persist_interval" in report
    assert main(["report", restored.store, "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert f"observed at boot ({restored.event_log}):" in text and "no boot observed yet" not in text
    explicit = ["report", restored.store, "--config", str(config), "--events", str(elsewhere), "--json"]
    assert main(explicit) == 0  # --events still names the log explicitly
    assert json.loads(capsys.readouterr().out)["observed"] == []
