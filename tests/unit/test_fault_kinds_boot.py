"""Issue 12, kind 1 at boot (never blame a healthy checkpoint for the model's faults) and kind 9 (remedy text).

The blame table (docs/boot.md §2, "Blame table") against a real store, with the scripted
supervisord + service stand-in of ``test_boot_sequence`` (a fault-injection seam).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ModelFaultError, NoValidCheckpointError, ServiceError
from appliance.events import read_events
from appliance.format import slotstate as ss
from appliance.format.handoff import Phase
from tests.unit.test_boot_sequence import Node, ScriptedService

pytestmark = [pytest.mark.unit, pytest.mark.faults]


class FaultyModelService(ScriptedService):
    """Adds model faults to the script: ``model`` (tensors do not fit), ``refuse`` (canary input), ``config``."""

    def start(self, name: str) -> None:
        h = self.run.read_handoff()
        assert h is not None
        kind = self.plan.get((h.slot, h.generation), "ok")
        if kind == "model":
            self.pid += 1
            self.started.append((h.slot, h.generation))
            self.state = "EXITED"
            error = ModelFaultError("the model's tensors do not fit: conv.weight float32[8, 3, 3, 3] vs [8, 3, 5, 5]")
            self._report(Phase.FAILED, error=error.to_dict() | {"phase": "restoring"})
            return
        if kind == "config":
            self.pid += 1
            self.started.append((h.slot, h.generation))
            self.state = "EXITED"
            error = {"error": "ConfigError", "exit_code": 18, "problem": "x", "phase": "restoring"}
            self._report(Phase.FAILED, error=error)
            return
        if kind == "refuse":  # restores fine, then refuses the canary input (HTTP 422)
            self.pid += 1
            self.started.append((h.slot, h.generation))
            self.state = "RUNNING"
            self._report(Phase.RESTORED, timings={})
            return
        super().start(name)

    def canary(self, inputs: list[Any]) -> Any:
        h = self.run.read_handoff()
        assert h is not None
        if self.plan.get((h.slot, h.generation)) == "refuse":
            raise ModelFaultError("the model cannot take the canary input (HTTP 422): inputs must be 2-D")
        return super().canary(inputs)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path)
    n.service = FaultyModelService(n.run)
    return n


def _events(node: Node, name: str) -> list[dict[str, Any]]:
    return [e for e in read_events(node.config.event_log) if e["event"] == name]


@pytest.mark.parametrize(
    ("kind", "test_name"),
    [("model", "factory shape mismatch"), ("refuse", "canary input the model refuses"), ("config", "config error")],
)
def test_kind1_node_and_model_faults_blame_no_checkpoint(node: Node, kind: str, test_name: str) -> None:
    """The intact newest checkpoint is not marked BAD, boot exits 65, and a later boot still tries it."""
    older = node.commit(1)
    newest = node.commit(2)
    slot = node.store.select(newest).opened.slot
    node.service.plan[(slot, newest)] = kind
    for _ in range(node.config.max_boot_attempts + 2):  # retries never exhaust the attempts
        outcome = node.boot()
        assert outcome.exit_code == ServiceError.exit_code, test_name
        assert outcome.serving is None
        state = node.states.load(slot)
        assert state.state is not ss.BootState.BAD and state.attempts == 0
    assert _events(node, "boot.node_fault") and not _events(node, "slot.marked_bad")
    assert node.service.started[-1] == (slot, newest)  # never fell back to `older` behind the technician's back
    del node.service.plan[(slot, newest)]  # the technician fixed the model
    served = node.boot().serving
    assert served is not None and (served["slot"], served["generation"]) == (slot, newest) and older < newest


def test_kind1_factory_shape_mismatch_blames_no_checkpoint(node: Node) -> None:
    gen = node.commit(3)
    slot = node.store.select(gen).opened.slot
    node.service.plan[(slot, gen)] = "model"
    outcome = node.boot()
    assert outcome.exit_code == 65 and "intact checkpoint" in (outcome.recovery or "")
    assert node.states.load(slot).state is not ss.BootState.BAD


def test_kind1_canary_input_the_model_refuses_blames_no_checkpoint(node: Node) -> None:
    """Regression: an image-batch canary answered 422 and boot marked the intact checkpoint BAD."""
    gen = node.commit(4)
    slot = node.store.select(gen).opened.slot
    node.service.plan[(slot, gen)] = "refuse"
    outcome = node.boot()
    assert outcome.exit_code == 65
    assert _events(node, "canary.refused_input") and not _events(node, "canary.failed")
    assert node.states.load(slot).state is not ss.BootState.BAD


def test_kind1_a_wrong_canary_answer_still_condemns_the_checkpoint(node: Node) -> None:
    older = node.commit(5)
    newest = node.commit(6)
    slot = node.store.select(newest).opened.slot
    node.service.plan[(slot, newest)] = "wrong"
    outcome = node.boot()
    assert outcome.serving is not None and outcome.serving["generation"] == older
    assert node.states.load(slot).state is ss.BootState.BAD
    assert any("CanaryFailedError" in e["fields"]["reason"] for e in _events(node, "slot.marked_bad"))


def test_kind9_recovery_remedy_names_what_exists_today() -> None:
    """Regression: the remedy said 'import a signed checkpoint (USB)', which did not exist."""
    from appliance.cli.main import build_parser

    remedy = NoValidCheckpointError.remedy
    assert "appliance commit" in remedy and "appliance seed" in remedy and "signed checkpoint" in remedy
    assert "import a signed checkpoint (USB)" not in remedy
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for named in ("commit", "seed", "boot", "import"):
        if f"`appliance {named}" in remedy:
            assert named in commands, f"the remedy names `appliance {named}`, which does not exist"
    assert ("`appliance import" in remedy) == ("import" in commands)  # named exactly when it exists
