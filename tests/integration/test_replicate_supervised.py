"""The ``replicate`` program under real supervisord against a real S3 server; power cut mid-upload."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import CLI, LocalNode
from appliance.format.remote import HEAD_KEY
from appliance.remote.supervisord import ReplicateProgram, render_program
from appliance.signing import SigningKey
from tests.integration.s3server import S3Server, remote_json

pytestmark = pytest.mark.integration


def _remote_json(node: LocalNode, server: S3Server, bandwidth: int = 0) -> Path:
    key = SigningKey.generate()
    key.save(node.root / "head.key")
    return remote_json(node.root / "remote.json", server, head_key="head.key", head_trust=["head.key.pub"],
                       state_dir="replicate-state", poll_interval=0.5, retry_base=0.2, retry_cap=1.0,
                       bandwidth_limit=bandwidth)  # fmt: skip


def _with_replicate(node: LocalNode, remote: Path) -> None:
    program = ReplicateProgram(appliance=" ".join(CLI), config=str(node.config_path), remote=str(remote),
                               log_dir=str(node.root / "log"), user="")  # fmt: skip
    conf = node.root / "supervisord.conf"
    conf.write_text(conf.read_text() + "\n" + render_program(program))


def _wait(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def _head_generation(server: S3Server) -> int | None:
    path = server.bucket_dir() / "appliance" / "devices" / "node-1" / HEAD_KEY
    if not path.exists():
        return None
    payload = json.loads(path.read_bytes())["payload"]
    return int(json.loads(base64.b64decode(payload))["generation"])


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalNode]:
    n = LocalNode.create(tmp_path / "node")
    try:
        yield n
    finally:
        n.stop()


def test_replicate_program_pushes_each_commit_and_status_reports_it(node: LocalNode, server: S3Server) -> None:
    remote = _remote_json(node, server)
    node.seed()
    _with_replicate(node, remote)
    node.start()
    _wait(lambda: _head_generation(server) == 1)
    code, status = node.cli_json("remote", "status", "--remote", str(remote))
    assert code == 0 and status["replicated"]["generation"] == 1 and status["pending"] is False
    assert status["remote_head"]["generation"] == 1
    assert any(e["event"] == "remote.replicated" for e in node.events())


def test_power_cut_mid_upload_loses_nothing_and_the_next_start_finishes(node: LocalNode, server: S3Server) -> None:
    remote = _remote_json(node, server, bandwidth=64 * 1024)  # slow enough to cut in the middle
    node.seed()
    _with_replicate(node, remote)
    node.start()
    blobs = server.bucket_dir() / "appliance" / "devices" / "node-1" / "blobs"
    _wait(lambda: blobs.exists() and sum(1 for p in blobs.rglob("*") if p.is_file()) >= 2)
    node.power_cut()  # kill -9 of supervisord and every program at once
    assert _head_generation(server) is None  # no head names a half-uploaded checkpoint
    state = node.root / "replicate-state" / "replication.json"
    if state.exists():
        json.loads(state.read_text())  # durable writes: never torn
    cfg = json.loads(remote.read_text())
    cfg["bandwidth_limit"] = 0
    remote.write_text(json.dumps(cfg))
    node.start()
    _wait(lambda: _head_generation(server) == 1)
    _, status = node.cli_json("remote", "status", "--remote", str(remote))
    assert status["blobs_skipped"] >= 2  # what was uploaded before the cut was not sent again
