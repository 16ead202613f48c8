"""The model service with its journal: acknowledged steps survive a kill, replay before admission, rotation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from appliance.errors import JournalFullError, JournalKeyError
from appliance.events import read_events
from appliance.format.canary import Canary, check
from appliance.format.handoff import Admit, Phase
from appliance.node.config import NodeConfig
from appliance.node.control_channel import ControlClient
from appliance.persist.committer import Committer
from appliance.service import loader
from appliance.service.runtime import ServiceRuntime
from tests.integration.journal_helpers import batch, state_digest
from tests.integration.node_fixtures import handoff, node, serving_good, with_changes

pytestmark = pytest.mark.integration
__all__ = ["node"]


@pytest.fixture
def jnode(node: NodeConfig, tmp_path: Path) -> NodeConfig:
    return with_changes(node, journal_dir=str(tmp_path / "journal"))


def _up(config: NodeConfig) -> ServiceRuntime:
    rt = ServiceRuntime(config)
    rt.bring_up()
    assert rt.phase in (Phase.RESTORED, Phase.SERVING), rt.error
    return rt


def _adapt(rt: ServiceRuntime, steps: range) -> None:
    for i in steps:
        x, y = batch(i)
        rt.adapt(x.tolist(), y.tolist())


def test_a_killed_service_comes_back_with_every_acknowledged_step(jnode: NodeConfig) -> None:
    """The step counter continues exactly after the cut: replay between the verified restore and serving."""
    handoff(jnode, Admit.SELF)
    live = _up(jnode)
    _adapt(live, range(1, 8))
    assert live.model is not None
    expected, step = state_digest(live.model), loader.adaptation_step(live.model)
    # the process dies here (no close, no export): a new service process restores generation 1 again
    again = _up(jnode)
    assert again.model is not None and loader.adaptation_step(again.model) == step == 7
    assert state_digest(again.model) == expected
    assert "replaying" in again.timings and again.phase is Phase.SERVING
    replayed = read_events(jnode.event_log, frozenset({"journal.replayed"}))[-1]["fields"]
    assert replayed["records"] == 7 and replayed["generation"] == 1


def test_replay_leaves_the_process_deterministic_mode_as_it_found_it(jnode: NodeConfig) -> None:
    """Regression: recovery set torch deterministic mode process-wide, so later float4 ``torch.empty`` failed."""
    handoff(jnode, Admit.SELF)
    live = _up(jnode)
    _adapt(live, range(1, 3))
    before = torch.are_deterministic_algorithms_enabled()
    again = _up(jnode)
    assert again.model is not None and loader.adaptation_step(again.model) == 2
    assert torch.are_deterministic_algorithms_enabled() is before
    torch.empty(2, dtype=torch.float4_e2m1fn_x2)  # what the leaked mode broke in the round-trip tests


def test_boot_canary_after_replay_is_the_checkpoints_answer_on_the_restored_state(jnode: NodeConfig) -> None:
    handoff(jnode, Admit.SELF)
    live = _up(jnode)
    _adapt(live, range(1, 4))
    handoff(jnode, Admit.BOOT)  # the next boot: restored, replayed, then boot's canary, then admission
    again = _up(jnode)
    assert again.phase is Phase.RESTORED
    assert again.restored is not None
    canary = Canary.from_metadata(again.restored.metadata)
    assert canary is not None
    assert check(canary, again.canary(canary.input)).ok
    assert again.model is not None and loader.adaptation_step(again.model) == 3


def test_an_export_carries_the_journal_point_and_a_commit_trims_the_journal(jnode: NodeConfig) -> None:
    serving_good(jnode)
    live = _up(jnode)
    _adapt(live, range(1, 6))
    receipt = live.export()
    assert receipt["journal"]["index"] == 5
    committer = Committer(jnode, live.events, receipts=_Receipts(live))
    result = committer.commit_file(Path(jnode.outbox) / receipt["file"])
    assert result is not None
    _adapt(live, range(6, 9))
    before = sorted(os.listdir(jnode.journal_dir))
    trimmed = live.journal_checkpointed(result.slot, result.generation)
    assert trimmed["removed"] and set(trimmed["removed"]) <= set(before)
    assert live.model is not None
    expected = state_digest(live.model)
    # boot serves the new generation: only the 3 steps after its journal point replay
    from appliance.format.handoff import Handoff
    from appliance.node.rundir import RunDir
    from tests.integration.node_fixtures import digest_of

    h = Handoff("b00716", result.slot, result.generation, digest_of(jnode, result.slot, result.generation),
                Admit.SELF, "2026-01-01T00:00:00Z")  # fmt: skip
    RunDir(jnode.run_dir).write_handoff(h)
    again = _up(jnode)
    assert again.journal is not None and again.journal.journal.recovery is not None
    assert again.journal.journal.recovery.replayed == 3
    assert again.model is not None and state_digest(again.model) == expected


class _Receipts:
    def __init__(self, rt: ServiceRuntime) -> None:
        self.rt = rt

    def receipt(self, name: str) -> dict[str, object] | None:
        return self.rt.receipt(name)


def test_adaptation_waits_at_twice_the_cap_instead_of_dropping_records(jnode: NodeConfig) -> None:
    handoff(jnode, Admit.SELF)
    live = _up(with_changes(jnode, journal_max_bytes=1 << 16))
    live.export = lambda: {"unchanged": True}  # type: ignore[method-assign]  # no watchdog here to commit
    with pytest.raises(JournalFullError):
        _adapt(live, range(1, 1000))
    assert read_events(jnode.event_log, frozenset({"journal.cap_reached"}))


def test_a_journal_key_readable_by_others_is_refused_before_the_restore(jnode: NodeConfig, tmp_path: Path) -> None:
    key = tmp_path / "jkey"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    handoff(jnode, Admit.SELF)
    rt = ServiceRuntime(with_changes(jnode, journal_key=str(key)))
    rt.bring_up()
    assert rt.phase is Phase.FAILED and rt.exit_code == JournalKeyError.exit_code
    assert rt.error is not None and rt.error["phase"] == "loading"  # blames no checkpoint
    assert torch.get_num_threads() >= 1


def test_journal_check_exits_51_on_a_forged_record(jnode: NodeConfig, tmp_path: Path) -> None:
    from appliance.cli.main import main
    from appliance.errors import JournalForgedError
    from appliance.format.journal import KIND_STEP, encode_record

    handoff(jnode, Admit.SELF)
    live = _up(jnode)
    _adapt(live, range(1, 3))
    config = tmp_path / "node-j.json"
    config.write_bytes(jnode.to_bytes())
    assert main(["journal", "check", "--config", str(config)]) == 0
    seg = sorted(Path(jnode.journal_dir).glob("seg-*.ajl"))[-1]
    with open(seg, "ab") as f:
        f.write(encode_record(os.urandom(32), KIND_STEP, bytes.fromhex(seg.stem.split("-")[2]), 3, b"x"))
    assert main(["journal", "check", "--config", str(config)]) == JournalForgedError.exit_code


def test_persist_tells_the_service_over_the_control_channel_and_the_journal_rotates(jnode: NodeConfig) -> None:
    """The watchdog's commit hook: POST /v1/journal/checkpointed (role persist) trims what the commit covers."""
    from appliance.persist.daemon import PersistDaemon
    from appliance.service.control import ControlServer

    serving_good(jnode)
    live = _up(jnode)
    server = ControlServer(live)
    server.start()
    try:
        _adapt(live, range(1, 5))
        live.export()
        daemon = PersistDaemon(Committer(jnode, live.events), live.events)
        result = daemon.process()  # commits the export, then calls the service's journal route
        assert result is not None
        rotated = read_events(jnode.event_log, frozenset({"journal.rotated"}))
        assert rotated and rotated[-1]["fields"]["index"] == 4 and rotated[-1]["fields"]["removed"] >= 1
        status, body = ControlClient(jnode.control_socket).call("POST", "/v1/journal/checkpointed", {"slot": 1})
        assert status == 422
    finally:
        server.stop()


def test_reaching_the_cap_forces_a_persist_with_the_journal_point(jnode: NodeConfig) -> None:
    import time

    handoff(jnode, Admit.SELF)
    live = _up(with_changes(jnode, journal_max_bytes=1 << 16))
    i = 0
    while not read_events(jnode.event_log, frozenset({"journal.cap_reached"})):
        i += 1
        _adapt(live, range(i, i + 1))
    deadline = time.monotonic() + 60
    while not list(Path(jnode.outbox).glob("export-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    exported = read_events(jnode.event_log, frozenset({"state.exported"}))
    assert exported and list(Path(jnode.outbox).glob("export-*")), "the cap forced an export for the watchdog"
    assert live._last_receipt is not None and live._last_receipt["journal"]["index"] >= 60


def test_requests_are_answered_while_an_export_captures_and_steps_wait_for_it(jnode: NodeConfig) -> None:
    """The capture holds the model's lock shared: requests go on (the capture pause was the p99 of
    serving during a persist, issue 16), adaptation steps wait (no half-applied step is captured)."""
    import threading

    handoff(jnode, Admit.SELF)
    rt = _up(jnode)
    x, y = batch(1)
    capturing, release = threading.Event(), threading.Event()

    def capture() -> None:  # what export.capture does for the length of its copy
        with rt.model_lock.shared:
            capturing.set()
            release.wait(10)

    holder = threading.Thread(target=capture, daemon=True)
    holder.start()
    assert capturing.wait(5)
    assert len(rt.infer(x.tolist())) == 8  # answered during the capture
    stepped = threading.Event()
    threading.Thread(target=lambda: (rt.adapt(x.tolist(), y.tolist()), stepped.set()), daemon=True).start()
    assert not stepped.wait(0.5)  # the step waits for the capture
    release.set()
    assert stepped.wait(10)
    holder.join(5)
