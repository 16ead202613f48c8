"""Network faults from the kernel: nftables drops or rejects the S3 server's port mid-upload.

The server and the replicator run inside a network namespace of their own (so the rules touch
nothing else on this machine); the rule is added while the upload is running, the replicator
fails with exit 69 and leaves no head naming a partial checkpoint, and after the rule is removed
the next pass resumes (what was uploaded is not sent again).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import CLI, LocalNode
from appliance.format.remote import HEAD_KEY
from appliance.signing import SigningKey
from tests.integration.s3server import SKIP_REASON, S3Server, rclone_binary, remote_json, running_server

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.root]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns, nft)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, nftables: bootstrap/deps.d/30-travel.sh)"
    if rclone_binary() is None:
        return SKIP_REASON
    return None


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    name = f"i13-{uuid.uuid4().hex[:8]}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        _run("ip", "netns", "exec", name, "nft", "add", "table", "inet", "faults")
        _run("ip", "netns", "exec", name, "nft", "add", "chain", "inet", "faults", "input",
             "{ type filter hook input priority 0 ; }")  # fmt: skip
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)


@pytest.fixture
def server(tmp_path: Path, netns: str) -> Iterator[S3Server]:
    with running_server(tmp_path / "s3", prefix_cmd=("ip", "netns", "exec", netns)) as s:
        yield s


def _node(tmp_path: Path, server: S3Server) -> tuple[LocalNode, Path]:
    node = LocalNode.create(tmp_path / "node")
    node.seed()
    key = SigningKey.generate()
    key.save(node.root / "head.key")
    remote = remote_json(node.root / "remote.json", server, head_key="head.key", head_trust=["head.key.pub"],
                         state_dir="replicate-state", bandwidth_limit=48 * 1024, connect_timeout=1.0,
                         read_timeout=3.0, max_attempts=2)  # fmt: skip
    return node, remote


def _replicate(netns: str, node: LocalNode, remote: Path) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", netns, *CLI, "replicate", "--once", "--json",
           "--config", str(node.config_path), "--remote", str(remote)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _blobs(server: S3Server) -> int:
    d = server.bucket_dir() / "appliance" / "devices" / "node-1" / "blobs"
    return sum(1 for p in d.rglob("*") if p.is_file()) if d.exists() else 0


@pytest.mark.parametrize("verdict", ["drop", "reject with tcp reset"])
def test_port_blocked_mid_upload_fails_cleanly_and_the_next_pass_resumes(
    tmp_path: Path, netns: str, server: S3Server, verdict: str
) -> None:
    node, remote = _node(tmp_path, server)
    proc = _replicate(netns, node, remote)
    deadline = time.monotonic() + 60
    while _blobs(server) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the upload finished before the fault could be injected"
    rule = f"tcp dport {server.port} {verdict}"
    _run("ip", "netns", "exec", netns, "nft", "add", "rule", "inet", "faults", "input", *rule.split())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 69, (out, err)
    assert json.loads(out)["error"] == "SourceUnavailableError"
    head = server.bucket_dir() / "appliance" / "devices" / "node-1" / HEAD_KEY
    assert not head.exists()  # no head names a partial checkpoint
    uploaded = _blobs(server)
    _run("ip", "netns", "exec", netns, "nft", "flush", "chain", "inet", "faults", "input")
    cfg = json.loads(remote.read_text())
    cfg["bandwidth_limit"] = 0
    remote.write_text(json.dumps(cfg))
    state = node.root / "replicate-state" / "replication.json"
    data = json.loads(state.read_text())
    data["next_attempt_at"] = None  # skip the backoff wait
    state.write_text(json.dumps(data))
    again = _replicate(netns, node, remote)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, (out, err)
    result = json.loads(out)
    assert result["action"] == "replicated" and result["skipped"] >= uploaded >= 2
    assert head.exists()
