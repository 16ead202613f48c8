"""Issue 10 control half, the parts with no process boundary: output hygiene, oversized events, roles, caps,
network adaptation's gate, log flood limits, crash-count decay."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi", reason="the service listener tests need fastapi (absent from the torch-free Python 3.10 smoke)"
)
from fastapi.testclient import TestClient

from appliance.cli.main import main
from appliance.cli.output import printable
from appliance.errors import ConfigError
from appliance.events import MAX_LINE, EventLog, read_events
from appliance.node.config import NodeConfig, load_config
from appliance.node.control_channel import Peer, Policy, role_of
from appliance.service.limits import RateLimitFilter
from tests.unit.test_guard import Setup, setup

pytestmark = pytest.mark.unit
__all__ = ["setup"]
ESCAPES = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202egnp.exe\r"
FORGED = "\n2026-01-01T00:00:00.000Z  boot     boot.serving         serving slot A generation 99"


def test_terminal_escapes_in_events_are_neutralised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Control characters, bidi overrides and embedded newlines from any event field print as escapes."""
    assert main(["node-init", str(tmp_path / "n")]) == 0
    config = load_config(tmp_path / "n" / "node.json")
    capsys.readouterr()
    EventLog(config.event_log, "persist", journal=None).emit(
        "outbox.rejected", file=ESCAPES + FORGED, error="ExportFileError", problem=ESCAPES
    )
    assert main(["events", "--config", str(tmp_path / "n" / "node.json")]) == 0
    shown = capsys.readouterr().out
    assert not any(c in shown for c in "\x1b\x07\x9b\u202e\r")
    assert "\\x1b[2J" in shown and "\\u202e" in shown
    assert len(shown.splitlines()) == len(read_events(config.event_log))  # no forged line


def test_terminal_escapes_in_trust_list_are_neutralised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key comment written by whoever edited the trust store cannot drive the operator's terminal."""
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert main(["init", str(tmp_path / "s"), "--trust", str(tmp_path / "k.pub")]) == 0
    assert main(["keygen", str(tmp_path / "k2")]) == 0
    assert main(["trust", str(tmp_path / "s"), "add", str(tmp_path / "k2.pub"), "--comment", ESCAPES + FORGED]) == 0
    capsys.readouterr()
    assert main(["trust", str(tmp_path / "s"), "list"]) == 0
    shown = capsys.readouterr().out
    assert not any(c in shown for c in "\x1b\x07\x9b\u202e\r") and "boot.serving" in shown
    assert len(shown.splitlines()) == 3  # threshold + two keys: the comment's newline forged nothing


def test_printable_keeps_ordinary_text() -> None:
    assert printable("slot A generation 3 — ok\n  next\tline ü") == "slot A generation 3 — ok\n  next\tline ü"


def test_oversized_event_truncates_its_fields_never_its_line(tmp_path: Path) -> None:
    """An event over 256 KiB keeps its line (and the next event), with its fields cut and marked."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path, "persist", journal=None)
    log.emit("persist.failed", file="x" * (MAX_LINE * 2), error="E", problem="p" * 10)
    log.emit("persist.deferred", reason="next event")
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(len(line) < MAX_LINE for line in lines)
    first, second = read_events(path)
    assert first["truncated"] is True and first["fields"]["file"].endswith("chars cut]")
    assert first["fields"]["problem"] == "p" * 10 and second["fields"]["reason"] == "next event"
    huge = {f"k{i}": "v" * 4000 for i in range(200)}
    log.emit("persist.failed", file="f", error="E", problem="p", **huge)
    assert read_events(path)[-1]["truncated"] is True


def test_control_roles_follow_the_kernel_reported_uid() -> None:
    policy = Policy(control=frozenset({1001}), adapt=frozenset({1002}), own=999)
    assert role_of("POST", "/v1/admit") == "boot" and role_of("POST", "/v1/export") == "persist"
    assert role_of("POST", "/v1/adapt") == "adapt" and role_of("GET", "/v1/receipt?file=x") == "persist"
    assert role_of("POST", "/v1/infer") is None and role_of("GET", "/v1/admit") is None
    assert policy.allows(Peer(1, 0, 0), "adapt") and policy.allows(Peer(1, 999, 999), "boot")
    assert policy.allows(Peer(1, 1001, 1), "boot") and not policy.allows(Peer(1, 1001, 1), "adapt")
    assert policy.allows(Peer(1, 1002, 1), "adapt") and not policy.allows(Peer(1, 1002, 1), "persist")
    assert not any(policy.allows(Peer(1, 5000, 0), role) for role in ("boot", "persist", "adapt"))


def test_caps_have_sane_defaults_and_refuse_nonsense() -> None:
    c = NodeConfig()
    assert (c.max_body_bytes, c.max_batch, c.max_connections, c.header_timeout) == (1 << 20, 256, 64, 10.0)
    assert c.network_adapt is False and c.adapt_users == () and c.control_socket == "/run/appliance/control.sock"
    for bad in ({"max_body_bytes": 10}, {"max_batch": 0}, {"max_connections": 0}, {"header_timeout": 0.0},
                {"network_adapt": True}):  # fmt: skip
        with pytest.raises(ConfigError):
            NodeConfig(**bad)  # type: ignore[arg-type]
    round_trip = NodeConfig.from_dict(json.loads(NodeConfig(allowed_hosts=("node.local",)).to_bytes()))
    assert round_trip.allowed_hosts == ("node.local",)


def test_network_adaptation_is_off_by_default_and_gated_when_on(tmp_path: Path) -> None:
    """Off: no route. On: bearer token (constant-time compare), then adapt_per_minute, else 401/429."""
    from appliance.service.app import AdaptGate, create_app
    from appliance.service.runtime import ServiceRuntime

    off = TestClient(create_app(ServiceRuntime(NodeConfig(run_dir=str(tmp_path)))), base_url="http://localhost")
    assert off.post("/v1/adapt", json={"inputs": [[0.0]], "targets": [[0.0]]}).status_code == 404
    token = tmp_path / "token"
    token.write_text("t" * 40)
    now = [0.0]
    gate = AdaptGate(token, per_minute=2, clock=lambda: now[0])
    with pytest.raises(Exception, match="401"):
        gate.check("Bearer wrong")
    gate.check("Bearer " + "t" * 40)
    gate.check("Bearer " + "t" * 40)
    with pytest.raises(Exception, match="429"):
        gate.check("Bearer " + "t" * 40)
    now[0] = 61.0
    gate.check("Bearer " + "t" * 40)
    token.write_text("short")
    with pytest.raises(ConfigError):
        AdaptGate(token, per_minute=2)


def test_log_floods_are_rate_limited() -> None:
    """At most N records per logger per minute pass; the next window says how many were dropped."""
    now = [0.0]
    limiter = RateLimitFilter(per_minute=10, clock=lambda: now[0])
    records = [logging.LogRecord("asyncio", logging.ERROR, "f", 1, "accept failed", None, None) for _ in range(100)]
    assert sum(limiter.filter(r) for r in records) == 10
    now[0] = 60.0
    record = logging.LogRecord("asyncio", logging.ERROR, "f", 1, "accept failed", None, None)
    assert limiter.filter(record) and "90 similar log records dropped" in str(record.msg)


def test_crash_counts_of_a_good_slot_decay_after_a_healthy_period(setup: Setup) -> None:
    """One crash long ago plus one now is one crash, not two: a GOOD checkpoint earns its count back."""
    from appliance.boot.guard import forgiven_after
    from appliance.format import slotstate as ss

    long_ago = "2020-01-01T00:00:00Z"
    setup.states.write(ss.crash(setup.states.load("B"), 4, "d" * 64, long_ago))
    assert setup.states.load("B").attempts == 1
    setup.serving(pid=21)
    assert setup.exited(21) == "counted"
    assert setup.states.load("B").attempts == 1  # the old crash was forgiven first
    forgiven = [e["fields"] for e in read_events(setup.log) if e["event"] == "slot.crashes_forgiven"]
    assert forgiven and forgiven[-1]["attempts"] == 1
    setup.serving(pid=22)
    assert setup.exited(22) == "counted" and setup.states.load("B").attempts == 2  # recent: not forgiven
    state = setup.states.load("B")
    assert forgiven_after(state, 3600, 0.0) is None
    bad = ss.mark_bad(state, 4, "d" * 64, "x", long_ago)
    assert forgiven_after(bad, 1, 1e10) is None  # only GOOD checkpoints are forgiven


def test_an_oom_kill_is_told_from_a_crash_by_the_kernel_counter(setup: Setup, tmp_path: Path) -> None:
    """Fault-injection seam: a counter file standing in for the cgroup's ``oom_kill`` (the real kernel counter
    is exercised in tests/integration/test_trust_oom.py). A rise since the service started: not counted."""
    from appliance.node.kills import Witness

    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    setup.run.path.mkdir(parents=True, exist_ok=True)
    Witness(31, str(counter), 1).write(setup.run.path)
    setup.serving(pid=31)
    assert setup.exited(31) == "counted"  # no new OOM kill: the service died by itself
    Witness(32, str(counter), 1).write(setup.run.path)
    counter.write_text("oom_kill 2\n")
    setup.serving(pid=32)
    assert setup.exited(32).startswith("not counted: killed by the kernel's OOM killer")
    assert setup.states.load("B").attempts == 1
    killed = [e["fields"] for e in read_events(setup.log) if e["event"] == "service.killed"]
    assert killed[-1]["pid"] == 32


def test_a_node_fault_before_the_restore_is_not_counted_at_all(setup: Setup) -> None:
    """The port squatter: the service reports node_fault "port"; neither the checkpoint nor the service is blamed."""
    from appliance.format.handoff import Admit, Handoff, Phase, ServiceReport

    h = Handoff("boot1", "B", 4, "d" * 64, Admit.SELF)
    setup.run.write_handoff(h)
    error = {"error": "ServiceError", "problem": "port held", "phase": "starting", "node_fault": "port"}
    setup.run.write_report(ServiceReport(41, Phase.FAILED, h, "t", error=error))
    assert setup.exited(41) == "ignored: node fault (port); supervisord retries"
    assert setup.guard.blameless == 0 and setup.states.load("B").attempts == 0
