"""The supervisord event listener: boot counting of a serving service that keeps dying."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.boot.control import ProcessInfo
from appliance.boot.guard import Guard
from appliance.events import EventLog, read_events
from appliance.format import slotstate as ss
from appliance.format.handoff import Admit, Handoff, Phase, ServiceReport
from appliance.node.config import NodeConfig
from appliance.node.rundir import RunDir
from appliance.storage import LocalStorage
from appliance.store.bootstate import SlotStates

pytestmark = pytest.mark.unit
D = "d" * 64


@dataclass
class FakeControl:
    state: str = "RUNNING"

    def start(self, name: str) -> None: ...

    def stop(self, name: str) -> None: ...

    def info(self, name: str) -> ProcessInfo:
        return ProcessInfo(name, self.state, 0, 0)


@dataclass
class Setup:
    guard: Guard
    run: RunDir
    states: SlotStates
    control: FakeControl
    boots: list[int] = field(default_factory=list)
    log: str = ""

    def serving(self, pid: int, phase: Phase = Phase.SERVING, admit: Admit = Admit.SELF) -> None:
        h = Handoff("boot1", "B", 4, D, admit)
        self.run.write_handoff(h)
        self.run.write_report(ServiceReport(pid, phase, h, "t"))

    def exited(self, pid: int, expected: str = "0") -> str:
        fields = {"processname": "model", "pid": str(pid), "expected": expected}
        return self.guard.handle("PROCESS_STATE_EXITED", fields)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    for slot in "AB":
        (tmp_path / "store" / slot).mkdir(parents=True)
    config = NodeConfig(store=str(tmp_path / "store"), run_dir=str(tmp_path / "run"), max_boot_attempts=2)
    states = SlotStates(LocalStorage(tmp_path / "store"))
    states.write(ss.mark_good(ss.unknown("B"), 4, D, "t"))
    control = FakeControl()
    log = str(tmp_path / "events.jsonl")
    boots: list[int] = []

    def reboot() -> int:
        boots.append(1)
        return 0

    guard = Guard(config, states, control, EventLog(log, "guard", journal=None), reboot)
    return Setup(guard, RunDir(config.run_dir), states, control, boots, log)


def test_crashes_of_the_serving_process_are_counted_until_the_checkpoint_is_condemned(setup: Setup) -> None:
    for attempt in (1, 2):
        setup.serving(pid=10 + attempt)
        assert setup.exited(10 + attempt) == "counted"
        assert setup.states.load("B").attempts == attempt
    setup.serving(pid=13)
    assert setup.exited(13).startswith("condemned")
    assert setup.states.load("B").refuses(4) and setup.boots == [1]
    assert [e["event"] for e in read_events(setup.log)][-3:] == ["service.crashed", "slot.marked_bad", "fallback.taken"]


def test_stale_or_foreign_events_are_ignored(setup: Setup) -> None:
    setup.serving(pid=20)
    assert setup.exited(19).startswith("ignored")  # a process that no longer serves the handoff
    assert setup.exited(20, expected="1").startswith("ignored")  # an expected exit (stop)
    assert setup.guard.handle("PROCESS_STATE_EXITED", {"processname": "persist", "expected": "0"}).startswith("ignored")
    setup.serving(pid=21, admit=Admit.BOOT)
    assert setup.exited(21).startswith("ignored")  # boot judges its own candidates
    with setup.run.boot_lock():
        setup.serving(pid=22)
        assert setup.exited(22).startswith("ignored")
    assert setup.states.load("B").attempts == 0 and setup.boots == []


def test_deaths_before_the_restore_blame_the_service_not_the_checkpoint(setup: Setup) -> None:
    for pid in (30, 31):
        setup.serving(pid, Phase.LOADING)
        assert setup.exited(pid).startswith("not counted")
    setup.serving(32, Phase.STARTING)
    assert "keeps dying before restoring" in setup.exited(32)
    assert setup.boots == [1] and setup.states.load("B").state is ss.BootState.GOOD


def test_fatal_condemns_a_restored_checkpoint_but_only_reboots_for_a_broken_service(setup: Setup) -> None:
    setup.serving(40, Phase.SERVING)
    setup.control.state = "RUNNING"
    assert setup.guard.handle("PROCESS_STATE_FATAL", {"processname": "model"}).startswith("ignored")
    setup.control.state = "FATAL"
    setup.serving(41, Phase.LOADING)
    assert "before restoring" in setup.guard.handle("PROCESS_STATE_FATAL", {"processname": "model"})
    assert not setup.states.load("B").refuses(4)
    setup.serving(42, Phase.RESTORING)
    assert setup.guard.handle("PROCESS_STATE_FATAL", {"processname": "model"}).startswith("condemned")
    assert setup.states.load("B").refuses(4) and len(setup.boots) == 2


def test_listener_protocol_acknowledges_every_event_on_stdout(setup: Setup) -> None:
    payload = "processname:model groupname:model from_state:RUNNING expected:0 pid:99"
    header = "ver:3.0 server:supervisor serial:1 pool:guard poolserial:1 eventname:PROCESS_STATE_EXITED"
    header += f" len:{len(payload)}\n"
    stdin, stdout = io.StringIO(header + payload), io.StringIO()
    with pytest.raises(KeyError):  # end of input: the real listener is killed by supervisord instead
        setup.guard.serve_forever(stdin, stdout)
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\n"
