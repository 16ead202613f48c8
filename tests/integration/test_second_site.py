"""Boot restores from the second site (a real S3 server) when both slots are gone; real supervisord."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.signing import SigningKey
from tests.integration.s3server import S3Server, remote_json

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path: Path, server: S3Server) -> Iterator[LocalNode]:
    n = LocalNode.create(tmp_path / "node")
    key = SigningKey.generate()
    key.save(n.root / "head.key")
    remote_json(n.root / "remote.json", server, head_key="head.key", head_trust=["head.key.pub"],
                state_dir="replicate-state", connect_timeout=1.0, read_timeout=5.0, max_attempts=2)  # fmt: skip
    try:
        yield n
    finally:
        n.stop()


def _destroy_both_slots(node: LocalNode) -> None:
    for slot in ("A", "B"):
        for sub in ("frames", "checkpoints"):
            shutil.rmtree(node.root / "store" / slot / sub, ignore_errors=True)
            (node.root / "store" / slot / sub).mkdir()


def _served_and_replicated(node: LocalNode) -> dict[str, object]:
    node.seed()
    node.start()
    code, first = node.boot()
    assert code == 0, first
    code, rep = node.cli_json("replicate", "--once", "--remote", str(node.root / "remote.json"))
    assert code == 0 and rep["action"] == "replicated", rep
    node.stop()
    return first


def test_both_slots_destroyed_boot_serves_from_the_remote_through_the_canary(node: LocalNode) -> None:
    first = _served_and_replicated(node)
    _destroy_both_slots(node)
    node.start()
    code, out = node.boot()
    assert code == 0, out
    assert out["serving"]["generation"] == first["serving"]["generation"]  # type: ignore[index]
    assert out["serving"]["manifest_digest"] == first["serving"]["manifest_digest"]  # type: ignore[index]
    assert out["stages"]["second_site_s"] > 0
    names = [e["event"] for e in node.events()]
    assert "remote.restore_started" in names and "remote.restored" in names
    assert names.index("remote.restored") < len(names) - 1 - names[::-1].index("canary.passed")
    restored = node.events("remote.restored")[-1]["fields"]
    assert restored["site"].endswith("devices/node-1") and restored["stages"]["total_s"] > 0
    node.wait_serving()


def test_remote_unreachable_enters_recovery_mode_as_before(node: LocalNode, server: S3Server) -> None:
    _served_and_replicated(node)
    _destroy_both_slots(node)
    server.stop()
    node.start()
    code, out = node.boot()
    assert code == 50 and out["recovery"]
    failed = node.events("remote.restore_failed")
    assert failed and failed[-1]["fields"]["error"] == "SourceUnavailableError"
