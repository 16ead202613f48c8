"""The boot loop with real supervisord and the real model service on loopback."""

from __future__ import annotations

import pytest
import torch

from appliance.cli.localnode import LocalNode
from tests.integration.boot_harness import NodeFactory, commit_variant, corrupt_newest_frame, names, node_factory
from tests.integration.fixture_models import QUERY_OF_DEATH

pytestmark = [pytest.mark.integration, pytest.mark.faults]
__all__ = ["node_factory"]
INPUT = [[0.5] * 16]


def booted(node: LocalNode) -> dict:
    node.start()
    code, outcome = node.boot()
    assert code == 0, outcome
    return outcome


def test_cold_boot_serves_the_seeded_checkpoint(node_factory: NodeFactory) -> None:
    """A fresh node boots to serving the newest committed checkpoint, marked GOOD, with stage timings."""
    node = node_factory()
    node.seed()
    outcome = booted(node)
    assert outcome["serving"]["slot"] == "A" and outcome["serving"]["generation"] == 1
    assert {"discover_s", "service_start_s", "restore_s", "canary_s", "total_s"} <= set(outcome["stages"])
    status, body = node.call("/v1/infer", {"inputs": INPUT})
    assert status == 200 and body["generation"] == 1 and len(body["outputs"][0]) == 4
    state = node.cli_json("boot-status")[1]["slots"]["A"]
    assert state["state"] == "GOOD" and state["good_generation"] == 1
    assert names(node.events())[-1] == "boot.serving"


def test_fallback_when_the_newest_slot_is_corrupted(node_factory: NodeFactory) -> None:
    """A flipped bit in the newest checkpoint is caught by the service's hashing; the other slot serves."""
    node = node_factory()
    node.seed()
    assert commit_variant(node, meta=lambda m: m.update(note="newer")) == 2
    corrupt_newest_frame(node, "B")
    outcome = booted(node)
    assert outcome["serving"]["generation"] == 1
    assert any("B/gen 2" in f and "FrameError" in f for f in outcome["failures"])
    bad = node.cli_json("boot-status")[1]["slots"]["B"]
    assert bad["state"] == "BAD" and bad["generation"] == 2
    assert node.events("restore.failed")[-1]["fields"]["error"] == "FrameError"


def test_canary_failure_marks_bad_and_falls_back(node_factory: NodeFactory) -> None:
    """A checkpoint whose restored service answers its canary wrongly is never served."""
    node = node_factory()
    node.seed()

    def wrong_expectation(meta: dict) -> None:
        meta["canary"]["expected"][0][0] += 1.0

    commit_variant(node, meta=wrong_expectation)
    outcome = booted(node)
    assert outcome["serving"]["generation"] == 1
    assert node.events("canary.failed")[-1]["fields"]["generation"] == 2
    assert node.cli_json("boot-status")[1]["slots"]["B"]["state"] == "BAD"


def test_boot_count_fallback_when_the_service_keeps_crashing_after_restore(node_factory: NodeFactory) -> None:
    """A checkpoint that restores and passes its canary but kills the service on traffic is boot-counted out."""
    node = node_factory(model="tests.integration.fixture_models:fragile", max_boot_attempts=2)
    node.seed()
    commit_variant(node, state=lambda t: t.__setitem__("fragile", torch.tensor(1, dtype=torch.int64)))
    assert booted(node)["serving"]["generation"] == 2
    for crash in range(3):  # attempts 1, 2, 3 > max 2: marked BAD, the guard boots the other slot
        node.wait_serving()
        with pytest.raises(Exception):
            node.call("/v1/infer", {"inputs": [[QUERY_OF_DEATH] * 16]}, timeout=10)
        node.wait_event("service.crashed", after=crash)
    node.wait_event("boot.serving", after=1, timeout=90)
    status, body = node.call("/v1/infer", {"inputs": [[QUERY_OF_DEATH] * 16]})
    assert status == 200 and body["generation"] == 1
    state = node.cli_json("boot-status")[1]["slots"]["B"]
    assert state["state"] == "BAD" and "died 3 times" in state["reason"]


def test_anti_rollback_refuses_checkpoints_below_the_floor(node_factory: NodeFactory) -> None:
    """A correctly signed checkpoint older than the floor is refused; with nothing else, recovery mode."""
    node = node_factory()
    node.seed()
    commit_variant(node)
    (node.root / "floor.json").write_text(
        '{"floor":3,"format":"appliance.floor","updated":"2026-01-01T00:00:00Z","version":1}\n'
    )
    node.start()
    code, outcome = node.boot()
    assert code == 50 and outcome["recovery"]
    assert all("RollbackError" in f for f in outcome["failures"])
    refused = node.events("checkpoint.refused")
    assert {e["fields"]["generation"] for e in refused} == {1, 2}
    assert node.cli_json("boot-status")[1]["recovery"]["reason"]
    with pytest.raises(Exception):  # nothing listens in recovery mode
        node.call("/ready", timeout=2)


def test_floor_rises_only_to_the_fallback_slots_proven_generation(node_factory: NodeFactory) -> None:
    """After both slots were proven GOOD the floor is the older of the two, so fallback stays bootable."""
    node = node_factory()
    node.seed()
    booted(node)  # A/1 GOOD; floor stays 0 (only one slot proven)
    assert node.cli_json("boot-status")[1]["floor"] == 0
    node.control_call("/v1/adapt", {"inputs": INPUT, "targets": [[1.0, 0.0, -1.0, 0.5]]})
    node.control_call("/v1/export", {})
    node.wait_event("persist.committed")  # generation 2 into B
    code, outcome = node.boot()
    assert code == 0 and (outcome["serving"]["slot"], outcome["serving"]["generation"]) == ("B", 2)
    assert node.cli_json("boot-status")[1]["floor"] == 1
    assert node.events("floor.raised")[-1]["fields"] == {"old": 0, "new": 1}


def test_service_that_cannot_start_enters_recovery_without_blaming_checkpoints(node_factory: NodeFactory) -> None:
    """Model code that fails before any restore leaves every slot's state untouched and says why."""
    node = node_factory(model="appliance.models.demo:build")
    node.seed()
    config = (
        (node.root / "node.json")
        .read_text()
        .replace("appliance.models.demo:build", "tests.integration.fixture_models:broken")
    )
    (node.root / "node.json").write_text(config)
    node.start()
    code, outcome = node.boot()
    assert code == 65 and "before it restores" in outcome["recovery"]
    slots = node.cli_json("boot-status")[1]["slots"]
    assert slots["A"]["state"] != "BAD"
    assert node.events("service.failed")[-1]["fields"]["phase"] == "loading"


def test_checkpoint_for_another_model_is_refused(node_factory: NodeFactory) -> None:
    """A signed checkpoint whose compatibility string names another model is never restored."""
    node = node_factory()
    node.seed()
    other = node_factory(model_id="some-other-model")
    # same device key in both stores: only the model id differs
    other_key = other.root / "keys" / "device.key"
    other_key.unlink()  # 0400, never rewritten in place
    other_key.write_bytes((node.root / "keys" / "device.key").read_bytes())
    other_key.chmod(0o400)
    trust = (node.root / "store" / "trust.json").read_bytes()
    (other.root / "store" / "trust.json").write_bytes(trust)
    other.seed()
    other.seed(force=True)  # generations 1 (A) and 2 (B) of the other model
    src, dst = other.root / "store" / "B", node.root / "store" / "B"
    for sub in ("frames", "checkpoints"):
        for f in (src / sub).iterdir():
            (dst / sub / f.name).write_bytes(f.read_bytes())
    outcome = booted(node)
    assert outcome["serving"]["generation"] == 1
    refused = node.events("checkpoint.refused")[-1]["fields"]
    assert refused["generation"] == 2 and refused["error"] == "CompatibilityError"


def test_missing_slot_and_corrupt_state_file_still_boot(node_factory: NodeFactory) -> None:
    """A missing slot directory and a garbage state file degrade to the other slot / UNKNOWN, never a crash."""
    node = node_factory()
    node.seed()
    commit_variant(node)  # generation 2 in B
    (node.root / "store" / "A" / "state.json").write_bytes(b"\x00garbage{")
    (node.root / "store" / "B").rename(node.root / "store" / "B.unplugged")
    outcome = booted(node)
    assert outcome["serving"]["generation"] == 1
    assert node.events("slot.unavailable")[0]["fields"]["slot"] == "B"
    assert node.events("slot.state_damaged")[0]["fields"]["slot"] == "A"
