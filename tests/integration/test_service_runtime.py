"""The model service in process (FastAPI TestClient): restore from the handoff, admission, export."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from appliance.errors import ConfigError
from appliance.events import read_events
from appliance.format.canary import check
from appliance.format.handoff import Admit, Phase
from appliance.node.config import NodeConfig
from appliance.node.control_channel import ControlClient
from appliance.node.rundir import HANDOFF, RunDir
from appliance.service import loader
from appliance.service.app import create_app
from appliance.service.control import ControlServer
from appliance.service.early import start_early_restore
from appliance.service.runtime import ServiceRuntime
from appliance.sources.export import open_export
from tests.integration.node_fixtures import handoff, node, with_changes

pytestmark = pytest.mark.integration
__all__ = ["node"]
X = {"inputs": [[0.25] * 16]}


def started(config: NodeConfig) -> tuple[ServiceRuntime, TestClient]:
    runtime = ServiceRuntime(config)
    runtime.bring_up()  # synchronously: the server runs it in a thread
    return runtime, TestClient(create_app(runtime), base_url="http://localhost")


@contextlib.contextmanager
def control_of(runtime: ServiceRuntime) -> Iterator[ControlClient]:
    """The runtime's real control channel on RUN/control.sock, and a client (this process's user: root/own)."""
    server = ControlServer(runtime)
    server.start()
    try:
        yield ControlClient(runtime.config.control_socket)
    finally:
        server.stop()


def test_restored_service_answers_only_the_canary_until_boot_admits_it(node: NodeConfig) -> None:
    """Traffic is refused until the boot that started the service admits it after the canary."""
    h = handoff(node)
    runtime, client = started(node)
    assert runtime.phase is Phase.RESTORED
    assert client.get("/health").json()["restore"]["generation"] == 1
    assert client.get("/ready").status_code == 503
    assert client.post("/v1/infer", json=X).status_code == 503
    with control_of(runtime) as control:
        assert control.call("POST", "/v1/canary", X)[0] == 200
        assert control.call("POST", "/v1/admit", {"boot_id": "someoneelse"})[0] == 409
        assert control.call("POST", "/v1/admit", {"boot_id": h.boot_id})[0] == 200
    assert client.get("/ready").status_code == 200
    body = client.post("/v1/infer", json=X).json()
    assert body["generation"] == 1 and len(body["outputs"][0]) == 4
    assert RunDir(node.run_dir).read_report().phase is Phase.SERVING  # type: ignore[union-attr]


def test_handoff_for_a_checkpoint_proven_good_admits_itself(node: NodeConfig) -> None:
    """A service restarted by supervisord for a GOOD checkpoint serves as soon as its restore verified."""
    handoff(node, Admit.SELF)
    runtime, client = started(node)
    assert runtime.phase is Phase.SERVING and client.get("/ready").status_code == 200


def test_handoff_that_does_not_match_the_slot_fails_with_its_exit_code(node: NodeConfig) -> None:
    """The service restores exactly what boot chose: a different manifest digest is refused."""
    handoff(node, digest="0" * 64)
    runtime, client = started(node)
    assert runtime.phase is Phase.FAILED and runtime.exit_code == 34
    assert client.get("/ready").status_code == 503
    failed = read_events(node.event_log, frozenset({"restore.failed"}))[-1]["fields"]
    assert failed["error"] == "ManifestError"


def test_checkpoint_for_another_architecture_fails_the_restore(node: NodeConfig) -> None:
    """Tensor names or shapes that do not fit the model end the restore as the *model's* fault (no slot blamed)."""
    handoff(node)
    runtime, _ = started(with_changes(node, model="tests.integration.fixture_models:medium"))
    assert runtime.phase is Phase.FAILED
    assert runtime.error is not None and runtime.error["error"] == "ModelFaultError"
    assert runtime.error["phase"] == "restoring" and runtime.exit_code == 67


def _standby(config: NodeConfig) -> tuple[ServiceRuntime, threading.Thread]:
    """A service started without a handoff (as supervisord starts it at power-on), once it is in standby."""
    runtime = ServiceRuntime(config, early=start_early_restore(config, RunDir(config.run_dir)))
    thread = runtime.start()
    deadline = time.monotonic() + 60
    while runtime.phase is not Phase.STANDBY:
        assert thread.is_alive() and time.monotonic() < deadline, f"no standby: {runtime.phase} {runtime.error}"
        time.sleep(0.01)
    return runtime, thread


@pytest.mark.parametrize("model_init", ["factory", "meta"])
def test_without_a_handoff_the_service_is_a_standby_until_boot_writes_one(node: NodeConfig, model_init: str) -> None:
    """docs/boot.md §14: built and waiting, it restores and answers nothing (B1); the handoff starts its restore."""
    config = with_changes(node, model_init=model_init)
    runtime, thread = _standby(config)
    client = TestClient(create_app(runtime), base_url="http://localhost")
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["phase"] == "standby"
    assert client.post("/v1/infer", json=X).status_code == 503
    assert runtime.restored is None and runtime.handoff is None
    h = handoff(config, Admit.SELF)
    thread.join(60)
    assert runtime.phase is Phase.SERVING and runtime.handoff == h, runtime.error
    assert runtime.timings["standby"] <= runtime.timings["handoff"] <= runtime.timings["restoring"]
    assert client.post("/v1/infer", json=X).status_code == 200


@pytest.mark.parametrize("model_init", ["factory", "meta"])
def test_a_damaged_handoff_is_never_acted_on_the_standby_waits_for_a_valid_one(
    node: NodeConfig, model_init: str
) -> None:
    """Boot writes handoffs atomically, so an unreadable one is not boot's: nothing is restored from it."""
    config = with_changes(node, model_init=model_init)
    runtime, thread = _standby(config)
    (Path(config.run_dir) / HANDOFF).write_text("{not json")
    thread.join(1.0)
    assert runtime.phase is Phase.STANDBY and runtime.restored is None and runtime.error is None
    assert runtime.early is None or runtime.early.handoff is None
    handoff(config, Admit.SELF)
    thread.join(60)
    assert runtime.phase is Phase.SERVING, runtime.error


def test_export_captures_adapted_state_with_its_canary(node: NodeConfig) -> None:
    """An export holds the adapted state, the pause it cost, and the canary answer of exactly that state."""
    handoff(node, Admit.SELF)
    runtime, client = started(node)
    before = client.post("/v1/infer", json=X).json()["outputs"]
    with control_of(runtime) as control:
        adapted = control.require("POST", "/v1/adapt", {"inputs": X["inputs"], "targets": [[1.0, 2.0, 3.0, 4.0]]})
        assert adapted["step"] == 1
        assert client.post("/v1/infer", json=X).json()["outputs"] != before
        result = control.require("POST", "/v1/export", {})
        assert result["step"] == 1 and result["pause_s"] > 0
        assert control.require("GET", f"/v1/receipt?file={result['file']}") == result
        opened = open_export(f"{node.outbox}/{result['file']}")
        try:
            canary = opened.info.canary
            assert canary is not None and opened.info.source is not None
            assert (opened.info.source["slot"], opened.info.source["generation"]) == ("A", 1)
            answer = control.require("POST", "/v1/canary", {"inputs": canary.input})["outputs"]
            assert check(canary, answer).ok
        finally:
            opened.close()


def test_a_meta_build_skips_initialisation_and_serves_exactly_the_restored_checkpoint(node: NodeConfig) -> None:
    """model_init=meta: no tensor is initialised by the factory, the restore fills all of them, answers are identical."""
    handoff(node, Admit.SELF)
    _, factory_client = started(node)
    expected = factory_client.post("/v1/infer", json=X).json()["outputs"]
    meta = with_changes(node, model_init="meta")
    runtime, client = started(meta)
    assert runtime.phase is Phase.SERVING
    assert client.post("/v1/infer", json=X).json()["outputs"] == expected
    assert all(t.device.type == "cpu" for t in runtime.model.state_dict().values())  # type: ignore[union-attr]
    finished = read_events(node.event_log, frozenset({"restore.finished"}))
    assert [e["fields"]["model_init"] for e in finished[-2:]] == ["factory", "meta"]


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("transient_buffer", "non-persistent buffers (scale)"),
        ("tied", "bias_alias and head.bias share one tensor"),
        ("reads_weights_at_init", "cannot run on the meta device"),
    ],
)
def test_a_meta_build_the_restore_would_not_cover_is_refused_and_the_factory_runs(factory: str, reason: str) -> None:
    """A module the checkpoint cannot fill completely is never left uninitialised: meta is refused, with the reason."""
    built = loader.build(f"tests.integration.fixture_models:{factory}", "meta")
    assert built.init.startswith("factory (meta refused: ") and reason in built.init
    assert all(t.device.type == "cpu" for t in built.model.state_dict().values())
    plain = loader.build(f"tests.integration.fixture_models:{factory}", "factory").model
    assert all(
        torch.equal(a, b) for a, b in zip(built.model.state_dict().values(), plain.state_dict().values(), strict=True)
    )


def test_an_unknown_model_init_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model_init"):
        NodeConfig(model_init="lazy")
    with pytest.raises(ConfigError, match="model_init"):
        loader.build("appliance.models.demo:build", "lazy")


# --- issue 16: the verified restore started before torch is imported (model_init meta) ---------------


def started_early(config: NodeConfig) -> tuple[ServiceRuntime, TestClient]:
    """As ``appliance serve`` does it: the early restore first, then the runtime's bring-up."""
    early = start_early_restore(config, RunDir(config.run_dir))
    runtime = ServiceRuntime(config, early=early)
    runtime.bring_up()
    return runtime, TestClient(create_app(runtime), base_url="http://localhost")


def test_the_early_restore_becomes_the_model_and_serves_exactly_the_checkpoint(node: NodeConfig) -> None:
    """The meta-built model adopts the early restore's verified buffers (no copy); answers, adaptation
    and the restore event are those of the in-place restore."""
    handoff(node, Admit.SELF)
    factory_runtime, factory_client = started(node)
    expected = factory_client.post("/v1/infer", json=X).json()["outputs"]
    assert factory_runtime.model is not None
    trainable = {n: p.requires_grad for n, p in factory_runtime.model.named_parameters()}
    meta = with_changes(node, model_init="meta")
    early = start_early_restore(meta, RunDir(meta.run_dir))
    assert early is not None
    buffers = early.result().buffers
    runtime = ServiceRuntime(meta, early=early)
    runtime.bring_up()
    client = TestClient(create_app(runtime), base_url="http://localhost")
    assert runtime.phase is Phase.SERVING
    assert client.post("/v1/infer", json=X).json()["outputs"] == expected
    model = runtime.model
    assert model is not None
    for name, tensor in model.state_dict().items():
        assert tensor.data_ptr() == buffers[name].ctypes.data, name  # the verified bytes, not a copy
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable  # a frozen backbone stays frozen
    with control_of(runtime) as control:
        control.require("POST", "/v1/adapt", {"inputs": X["inputs"], "targets": [[1.0, 2.0, 3.0, 4.0]]})
    assert client.post("/v1/infer", json=X).json()["outputs"] != expected
    finished = read_events(node.event_log, frozenset({"restore.finished"}))[-1]["fields"]
    assert finished["model_init"] == "meta" and finished["raw_bytes"] > 0


def test_a_rotten_frame_fails_the_early_restore_in_the_restoring_phase(node: NodeConfig) -> None:
    """The checkpoint's fault stays the checkpoint's: FrameError, phase restoring, nothing served."""
    handoff(node)
    frames = sorted((Path(node.store) / "A" / "frames").iterdir(), key=lambda p: -p.stat().st_size)
    data = bytearray(frames[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    frames[0].chmod(0o644)
    frames[0].write_bytes(bytes(data))
    runtime, client = started_early(with_changes(node, model_init="meta"))
    assert runtime.phase is Phase.FAILED and runtime.error is not None
    assert runtime.error["error"] == "FrameError" and runtime.error["phase"] == "restoring"
    assert client.get("/ready").status_code == 503


def test_another_architecture_is_the_models_fault_with_the_early_restore(node: NodeConfig) -> None:
    handoff(node)
    runtime, _ = started_early(with_changes(node, model="tests.integration.fixture_models:medium", model_init="meta"))
    assert runtime.phase is Phase.FAILED and runtime.error is not None
    assert runtime.error["error"] == "ModelFaultError" and runtime.error["phase"] == "restoring"
    assert runtime.exit_code == 67


def test_no_early_restore_unless_meta(node: NodeConfig) -> None:
    handoff(node)
    assert start_early_restore(node, RunDir(node.run_dir)) is None  # model_init factory: restore in place
    RunDir(node.run_dir).clear_handoff()
    early = start_early_restore(with_changes(node, model_init="meta"), RunDir(node.run_dir))  # no handoff: waits
    assert early is not None and early.handoff is None
    handoff(node)
    assert early.wait_handoff().generation == 1 and early.result().stats is not None
