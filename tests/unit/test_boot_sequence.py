"""The boot sequence against a real store with a scripted stand-in for supervisord and the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.boot.control import ProcessInfo
from appliance.boot.sequence import BootContext, BootOutcome, boot
from appliance.events import EventLog, read_events
from appliance.format import slotstate as ss
from appliance.format.handoff import Admit, Phase, ServiceReport
from appliance.node.config import NodeConfig
from appliance.node.floor import FileFloor, FloorMissingError
from appliance.node.rundir import RunDir
from appliance.signing import SigningKey
from appliance.store.bootstate import SlotStates
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.store import Store

pytestmark = [pytest.mark.unit, pytest.mark.faults]
CANARY = {"input": [[1.0]], "expected": [[2.0]]}


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ScriptedService:
    """Plays supervisord + the model service: ``plan[(slot, gen)]`` says how the service behaves."""

    run: RunDir
    plan: dict[tuple[str, int], str] = field(default_factory=dict)
    state: str = "STOPPED"
    pid: int = 100
    started: list[tuple[str, int]] = field(default_factory=list)
    replay: dict[str, Any] | None = None  # what the service's journal replay reports (ServiceReport.replay)

    def start(self, name: str) -> None:
        h = self.run.read_handoff()
        assert h is not None and h.admit is Admit.BOOT
        self.pid += 1
        self.started.append((h.slot, h.generation))
        kind, _, phase = self.plan.get((h.slot, h.generation), "ok").partition(":")
        self.state = "RUNNING" if kind in ("ok", "hang", "wrong") else "EXITED"
        if kind in ("ok", "wrong"):
            timings = {"loading": 1.0, "restoring": 1.2, "restored": 1.5} | ({"replaying": 1.4} if self.replay else {})
            self._report(Phase.RESTORED, timings=timings, replay=self.replay)
        elif kind == "fail":
            self._report(Phase.FAILED, error={"error": "FrameError", "problem": "bit rot", "phase": phase})
        else:  # "die:<phase>" or "hang:<phase>": last report before dying or while stuck
            self._report(Phase(phase))

    def _report(self, phase: Phase, **extra: Any) -> None:
        self.run.write_report(ServiceReport(self.pid, phase, self.run.read_handoff(), "t", **extra))

    def stop(self, name: str) -> None:
        self.state = "STOPPED"

    def info(self, name: str) -> ProcessInfo:
        return ProcessInfo(name, self.state, self.pid if self.state == "RUNNING" else 0, 0)

    def canary(self, inputs: list[Any]) -> Any:
        h = self.run.read_handoff()
        assert h is not None
        return [[3.0]] if self.plan.get((h.slot, h.generation)) == "wrong" else [[2.0]]

    def admit(self, boot_id: str) -> None:
        h = self.run.read_handoff()
        assert h is not None and h.boot_id == boot_id and h.admit is Admit.SELF


class Node:
    def __init__(self, tmp: Path) -> None:
        self.key = SigningKey.generate()
        self.store = Store.init(tmp / "store", [self.key.public], StoreConfig(model="m", frame_size=4096))
        self.config = NodeConfig(
            store=str(tmp / "store"),
            run_dir=str(tmp / "run"),
            event_log=str(tmp / "events.jsonl"),
            floor_file=str(tmp / "floor.json"),
            ready_timeout=5,
            max_boot_attempts=2,
        )
        FileFloor(self.config.floor_file).raise_to(0)  # provisioned, as node-init and the image do
        self.run = RunDir(self.config.run_dir)
        self.service = ScriptedService(self.run)
        self.states = SlotStates(self.store.storage)

    def commit(self, seed: int, canary: dict[str, Any] | None = CANARY) -> int:
        data = np.random.default_rng(seed).integers(0, 256, 8192, dtype=np.uint8)
        source = TensorSource("w", "uint8", (8192,), lambda: data)
        result, _ = self.store.commit([source], [self.key], {"canary": canary} if canary else {})
        return result.generation

    def boot(self) -> BootOutcome:
        clock = Clock()
        ctx = BootContext(
            config=self.config,
            run=self.run,
            control=self.service,
            probe=self.service,
            events=EventLog(self.config.event_log, "boot", journal=None),
            clock=clock,
            sleep=clock.sleep,
            store=self.store,
            states=self.states,
            floor=FileFloor(self.config.floor_file),
        )
        return boot(ctx)

    def events(self, name: str) -> list[dict[str, Any]]:
        return read_events(self.config.event_log, frozenset({name}))

    def slot(self, name: str) -> ss.SlotState:
        return self.states.load(name)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def served(outcome: BootOutcome) -> tuple[str, int]:
    assert outcome.serving is not None, outcome
    return outcome.serving["slot"], outcome.serving["generation"]


def test_newest_checkpoint_is_restored_canary_checked_marked_good_and_admitted(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    outcome = node.boot()
    assert served(outcome) == ("B", 2) and outcome.exit_code == 0
    assert node.slot("B").state is ss.BootState.GOOD and node.slot("B").attempts == 0
    handoff = node.run.read_handoff()
    assert handoff is not None and handoff.admit is Admit.SELF  # supervisord restarts serve right away
    assert {"discover_s", "service_start_s", "restore_s", "canary_s", "mark_s", "total_s"} <= set(outcome.stages)
    assert node.events("canary.passed")[-1]["fields"]["generation"] == 2


def test_a_journal_replay_that_stopped_still_serves_and_the_outcome_and_text_say_so(node: Node) -> None:
    """Trial 4, N4: boot exited 0 and printed only "replay 0.094" after the replay set steps aside."""
    from appliance.cli.boot_commands import _boot_text

    node.commit(1)
    stop = {"kind": "gap", "segment": "seg-x.ajl", "index": 3, "detail": "record 3 missing"}
    node.service.replay = {"replayed": 2, "seconds": 0.094, "last_index": 2, "stopped": stop, "cut": 0,
                           "set_aside_records": 3, "set_aside_bytes": 300, "retired_segments": 0,
                           "retired_dir": "/j/retired"}  # fmt: skip
    outcome = node.boot()
    assert served(outcome) == ("A", 1) and outcome.exit_code == 0 and outcome.stages["replay_s"] == pytest.approx(0.1)
    d = outcome.to_dict()
    assert d["replay"] == node.service.replay
    assert node.events("boot.serving")[-1]["fields"]["replay"]["stopped"] == stop
    text = _boot_text(d)
    assert "journal replay: 2 steps replayed (to index 2)" in text
    assert "JOURNAL REPLAY STOPPED at record 3 of seg-x.ajl (gap): record 3 missing" in text
    assert "3 journaled step records (300 bytes) set aside in /j/retired" in text


def test_without_a_journal_the_outcome_has_no_replay(node: Node) -> None:
    from appliance.cli.boot_commands import _boot_text

    node.commit(1)
    d = node.boot().to_dict()
    assert d["replay"] is None and "journal replay" not in _boot_text(d)


def test_restore_failure_marks_bad_and_falls_back(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    node.service.plan[("B", 2)] = "fail:restoring"
    outcome = node.boot()
    assert served(outcome) == ("A", 1)
    assert node.slot("B").state is ss.BootState.BAD and "FrameError" in node.slot("B").reason
    assert node.events("fallback.taken")[-1]["fields"]["slot"] == "B"


def test_a_bad_checkpoint_is_skipped_on_the_next_boot(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    node.service.plan[("B", 2)] = "fail:restoring"
    node.boot()
    node.service.started.clear()
    outcome = node.boot()
    assert served(outcome) == ("A", 1) and node.service.started == [("A", 1)]
    assert any("marked BAD earlier" in f for f in outcome.failures)


@pytest.mark.parametrize("behaviour", ["die:restored", "wrong", "hang:restoring", "die:restoring"])
def test_failures_after_the_restore_began_condemn_the_checkpoint(node: Node, behaviour: str) -> None:
    node.commit(1)
    node.commit(2)
    node.service.plan[("B", 2)] = behaviour
    assert served(node.boot()) == ("A", 1)
    assert node.slot("B").refuses(2)


@pytest.mark.parametrize("behaviour", ["die:starting", "die:loading", "hang:loading", "fail:loading"])
def test_a_service_that_fails_before_restoring_blames_no_checkpoint(node: Node, behaviour: str) -> None:
    node.commit(1)
    node.commit(2)
    node.service.plan[("B", 2)] = behaviour
    outcome = node.boot()
    assert outcome.serving is None and outcome.exit_code == 65
    assert outcome.recovery is not None and "before it restores" in outcome.recovery
    assert node.slot("B").state is not ss.BootState.BAD and node.slot("A").state is not ss.BootState.BAD
    assert node.run.read_recovery() is not None and node.service.state == "STOPPED"


def test_nothing_restorable_enters_recovery_mode_and_serves_nothing(node: Node) -> None:
    node.commit(1)
    node.service.plan[("A", 1)] = "fail:restoring"
    outcome = node.boot()
    assert outcome.exit_code == 50 and outcome.serving is None
    recovery = node.run.read_recovery()
    assert recovery is not None and recovery["failures"] and node.run.read_handoff() is None
    assert node.events("recovery.entered")


def test_empty_store_enters_recovery_mode(node: Node) -> None:
    assert node.boot().exit_code == 50


def test_boot_attempts_are_counted_before_the_service_starts(node: Node) -> None:
    """A node that keeps dying during restore (no process survives to say so) uses up its attempts."""
    node.commit(1)
    node.commit(2)
    state = node.slot("B")
    for _ in range(2):  # two boots that never came back (power loss mid-restore)
        state = ss.attempt(state, 2, node.store.log()[0]["manifest_digest"], "t")
    node.states.write(state)
    outcome = node.boot()
    assert served(outcome) == ("A", 1)
    assert "boot attempts did not reach serving" in node.slot("B").reason


def test_checkpoints_below_the_floor_are_refused(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    FileFloor(node.config.floor_file).raise_to(2)
    assert served(node.boot()) == ("B", 2)
    node.service.plan[("B", 2)] = "fail:restoring"
    node.states.write(ss.reset(node.slot("B"), "t"))
    outcome = node.boot()
    assert outcome.exit_code == 50
    refused = node.events("checkpoint.refused")[-1]["fields"]
    assert (refused["slot"], refused["generation"], refused["error"]) == ("A", 1, "RollbackError")


def test_floor_rises_to_the_older_proven_slot_after_a_good_mark(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    node.states.write(ss.mark_good(node.slot("A"), 1, "a" * 64, "t"))
    node.boot()
    assert FileFloor(node.config.floor_file).read() == 1
    assert node.events("floor.raised")[-1]["fields"] == {"old": 0, "new": 1}


def test_damaged_floor_file_is_rebuilt_from_the_slot_states(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    node.states.write(ss.mark_good(node.slot("A"), 1, "a" * 64, "t"))
    node.states.write(ss.mark_good(node.slot("B"), 2, "b" * 64, "t"))
    Path(node.config.floor_file).write_text("garbage")
    node.boot()
    assert node.events("floor.damaged")[-1]["fields"]["floor"] == 1
    assert FileFloor(node.config.floor_file).read() == 1


def test_deleted_floor_fails_closed(node: Node) -> None:
    """Deleting the floor file does not re-open rollback: the floor is rebuilt from the slot states."""
    node.commit(1)
    node.commit(2)
    node.commit(3)  # A/1, B/2, A/3
    node.states.write(ss.mark_good(node.slot("A"), 3, "a" * 64, "t"))
    node.states.write(ss.mark_good(node.slot("B"), 2, "b" * 64, "t"))
    FileFloor(node.config.floor_file).raise_to(2)
    Path(node.config.floor_file).unlink()  # the offline attacker deletes the floor ...
    node.service.plan[("A", 3)] = "fail:restoring"  # ... and spoils both newer checkpoints
    node.service.plan[("B", 2)] = "fail:restoring"
    outcome = node.boot()
    assert outcome.exit_code == 50 and outcome.serving is None  # A/1 would be a rollback
    assert node.events("floor.missing")[-1]["fields"]["floor"] == 2
    refused = [e["fields"] for e in node.events("checkpoint.refused")]
    assert ("A", 1, "RollbackError") in [(r["slot"], r["generation"], r["error"]) for r in refused]
    assert not node.events("floor.damaged")


def test_missing_floor_file_reads_as_missing_never_as_zero(tmp_path: Path) -> None:
    with pytest.raises(FloorMissingError):
        FileFloor(tmp_path / "floor.json").read()
    assert FileFloor(tmp_path / "floor.json").raise_to(0) == 0
    assert FileFloor(tmp_path / "floor.json").read() == 0


def test_damaged_commit_record_is_refused_and_reported(node: Node) -> None:
    node.commit(1)
    node.commit(2)
    record = Path(node.config.store) / "B" / "checkpoints" / f"{2:020d}.commit.json"
    record.write_bytes(record.read_bytes()[:-20])
    assert served(node.boot()) == ("A", 1)
    assert node.events("checkpoint.refused")[-1]["fields"]["generation"] == 2


def test_checkpoint_without_a_canary_is_gated_by_its_verified_restore(node: Node) -> None:
    node.commit(1, canary=None)
    assert served(node.boot()) == ("A", 1)
    assert "no canary" in node.events("canary.passed")[-1]["fields"]["detail"]


def test_malformed_canary_condemns_the_checkpoint(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits refuse such a canary now (issue 12); one signed by an older or foreign writer is still condemned."""
    import appliance.store.commit as commit_module

    node.commit(1)
    monkeypatch.setattr(commit_module, "check_metadata", dict)  # a writer without the canary check
    node.commit(2, canary={"input": "not a list", "expected": [[1.0]]})
    assert served(node.boot()) == ("A", 1)
    assert "malformed" in node.slot("B").reason


@pytest.mark.root
def test_an_unmounted_slot_is_never_read_even_if_its_directory_holds_checkpoints(node: Node, tmp_path: Path) -> None:
    """With require_mounts, B's bare directory (partition not mounted) is skipped; A's mounted one serves."""
    import dataclasses
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs as slot A's partition")
    node.commit(1)
    node.commit(2)  # the newest, in B, which will look unmounted
    slot_a = Path(node.config.store) / "A"
    saved = tmp_path / "A.saved"
    shutil.copytree(slot_a, saved)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(slot_a)], check=False).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        shutil.copytree(saved, slot_a, dirs_exist_ok=True)
        node.config = dataclasses.replace(node.config, require_mounts=True)
        assert served(node.boot()) == ("A", 1)
        assert node.events("slot.unavailable")[-1]["fields"]["slot"] == "B"
    finally:
        subprocess.run(["umount", str(slot_a)], check=False)


def test_a_service_restarted_behind_boots_back_counts_as_dead(node: Node) -> None:
    """If supervisord restarts a crashed service before boot looks, the new pid still condemns the candidate."""
    node.commit(1)
    node.commit(2)
    node.service.plan[("B", 2)] = "hang:restoring"
    real_info = node.service.info
    calls = {"n": 0}

    def info(name: str) -> ProcessInfo:
        calls["n"] += 1
        if calls["n"] == 3 and node.service.started[-1] == ("B", 2):
            node.service.pid += 1  # died and was restarted between two polls
        return real_info(name)

    node.service.info = info  # type: ignore[method-assign]
    assert served(node.boot()) == ("A", 1)
    assert "restarted" in node.slot("B").reason
