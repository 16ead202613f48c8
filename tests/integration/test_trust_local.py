"""The local unprivileged user (docs/design.md threat model): a real ``useradd`` user against the real service.

The intruder runs as itself (the kernel checks its uid); ``in_group`` adds the ``appliance`` group as a
supplementary group, i.e. the socket's file permissions let it connect and only ``SO_PEERCRED`` stands
in its way. Needs root to create the user (CI runs as root); skipped otherwise, saying why.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

from appliance.cli.localnode import LocalNode
from appliance.format.handoff import Phase
from appliance.models.demo import build
from appliance.node.config import NodeConfig
from appliance.service.control import ControlServer
from appliance.service.runtime import ServiceRuntime
from appliance.sources.export import write_export
from tests.integration.attackers import GROUP, Intruder, get, intruder, open_path_for_others, post, raw_http
from tests.integration.boot_harness import NodeFactory, node_factory, store_of
from tests.integration.node_fixtures import handoff, node

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.root]
__all__ = ["intruder", "node", "node_factory"]
X = [[0.1 * i for i in range(16)]]
ADAPT = json.dumps({"inputs": X, "targets": [[9.0, 9.0, 9.0, 9.0]]}).encode()


def serving(node_factory: NodeFactory) -> LocalNode:
    node = node_factory()
    node.seed()
    node.start()
    code, outcome = node.boot()
    assert code == 0, outcome
    open_path_for_others(Path(node.config.run_dir))
    return node


def test_local_user_cannot_adapt_the_served_model(node_factory: NodeFactory, intruder: Intruder) -> None:
    """Neither the network listener nor the control socket lets a local user change the served weights."""
    node = serving(node_factory)
    sock = node.config.control_socket
    mode = Path(sock).stat()
    assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == _gid(GROUP)
    before = node.call("/v1/infer", {"inputs": X})[1]["outputs"]
    port = node.config.port
    net = intruder.run(f"""
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall({post("/v1/adapt", ADAPT)!r})
print(s.recv(100).split(b" ")[1].decode())
""")
    assert net in ("404", "405")
    assert intruder.request_unix(sock, post("/v1/adapt", ADAPT)) == "EACCES"  # not in the group: cannot connect
    assert intruder.request_unix(sock, post("/v1/adapt", ADAPT), in_group=True) == "HTTP 403"  # kernel-told uid
    assert intruder.request_unix(sock, post("/v1/export", b"{}"), in_group=True) == "HTTP 403"
    assert node.call("/v1/infer", {"inputs": X})[1]["outputs"] == before
    refused = node.events("control.refused")
    assert refused and refused[-1]["fields"]["uid"] == intruder.uid
    assert not node.events("state.exported")


def test_admission_before_the_canary_is_refused(node: NodeConfig, intruder: Intruder) -> None:
    """A restored service not yet canary-checked cannot be admitted by anyone but boot, even with the boot id."""
    h = handoff(node)  # admit=boot: this service waits for boot's canary
    runtime = ServiceRuntime(node)
    runtime.bring_up()
    assert runtime.phase is Phase.RESTORED
    server = ControlServer(runtime)
    server.start()
    try:
        open_path_for_others(Path(node.run_dir))
        admit = post("/v1/admit", json.dumps({"boot_id": h.boot_id}).encode())
        assert intruder.request_unix(node.control_socket, admit, in_group=True) == "HTTP 403"
        assert intruder.request_unix(node.control_socket, post("/v1/canary", b'{"inputs": [[0.0]]}'),
                                     in_group=True) == "HTTP 403"  # fmt: skip
        assert runtime.phase is Phase.RESTORED
        status, body = raw_http(node.control_socket, get("/v1/status"))  # root may read the full status
        assert status == 200 and json.loads(body)["handoff"]["boot_id"] == h.boot_id
        assert runtime.public_health().get("handoff") is None
    finally:
        server.stop()
    events = [e["event"] for e in _events(node)]
    assert "service.admitted" not in events and "control.refused" in events


def test_export_not_from_the_service_is_quarantined(node_factory: NodeFactory) -> None:
    """A well-formed export the service never wrote (right source, poisoned weights) is never signed."""
    node = serving(node_factory)
    log = store_of(node).log()
    digest = next(e["manifest_digest"] for e in log if e["generation"] == 1)
    poisoned = build()
    with torch.no_grad():
        poisoned.head.weight.fill_(7.0)
    source = {"slot": "A", "generation": 1, "manifest_digest": digest}
    path, _ = write_export(poisoned.state_dict(), node.config.outbox, model="x", step=99, pause_s=0.0, source=source)
    rejected = node.wait_event("outbox.rejected", timeout=60)["fields"]
    assert rejected["file"] == path.name and rejected["error"] == "UnauthenticExportError"
    assert not path.exists() and (Path(node.config.outbox) / "quarantine").iterdir()
    assert [e["generation"] for e in store_of(node).log()] == [1]
    assert len(node.events("persist.started")) == 1  # the seed's, nothing since


def test_unchanged_state_is_not_committed_again(node_factory: NodeFactory) -> None:
    """Export requests without adaptation write nothing and commit nothing; an event says why."""
    node = serving(node_factory)
    outbox = Path(node.config.outbox)
    for _ in range(5):
        status, body = node.control_call("/v1/export", {})
        assert status == 200 and body["unchanged"] is True
    assert not list(outbox.glob("export-*")) and len(node.events("state.unchanged")) == 5
    assert node.control_call("/v1/adapt", {"inputs": X, "targets": [[1.0, 0.0, -1.0, 0.5]]})[0] == 200
    assert node.control_call("/v1/export", {})[1]["step"] == 1
    node.wait_event("persist.committed", after=1, timeout=120)
    assert node.control_call("/v1/export", {})[1]["unchanged"] is True
    assert [e["generation"] for e in store_of(node).log()] == [2, 1]


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def _events(config: NodeConfig) -> list[dict]:
    from appliance.events import read_events

    return read_events(config.event_log)
