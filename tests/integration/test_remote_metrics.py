"""The replicate program's Prometheus metrics move with each upload, against the real S3 server.

Exposure is a textfile (``STATE_DIR/metrics.prom``, mode 0640, no listener); ``appliance remote
status --json`` carries the same samples under ``metrics``.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.remote.metrics import METRICS_FILE, read_metrics
from appliance.remote.state import StateDir
from appliance.signing import SigningKey
from tests.integration.conftest import nudge, weights
from tests.integration.remote_node import Node
from tests.integration.s3server import S3Server, remote_json

pytestmark = pytest.mark.integration


@pytest.fixture
def head_key() -> SigningKey:
    return SigningKey.generate()


def _textfile(node: Node) -> dict[str, float]:
    state_dir = StateDir(node.config.state_dir)
    return read_metrics(state_dir.path, state_dir.load("node-1"), None)


def test_each_upload_moves_the_counters_and_the_duration_histogram(
    tmp_path: Path, server: S3Server, key: SigningKey, head_key: SigningKey
) -> None:
    node = Node(tmp_path, server, key, head_key)
    node.save(weights(1))
    before = time.time()
    first = node.replicator.step()
    m = _textfile(node)
    assert first["action"] == "replicated"
    assert m["appliance_replicate_uploads_total"] == 1 and m["appliance_replicate_failures_total"] == 0
    assert m["appliance_replicate_bytes_total"] == first["bytes_uploaded"] > 0
    assert m["appliance_replicate_upload_duration_seconds_count"] == 1
    assert m["appliance_replicate_queue_depth"] == 0 and m["appliance_replicate_replicated_generation"] == 1
    assert m["appliance_replicate_last_success_timestamp_seconds"] >= before
    mode = (Path(node.config.state_dir) / METRICS_FILE).stat().st_mode
    assert stat.S_IMODE(mode) == 0o640
    node.save(nudge(weights(1), 0.01, 2))
    second = node.replicator.step()
    m = _textfile(node)
    assert second["action"] == "replicated" and second["skipped"] > 0
    assert m["appliance_replicate_uploads_total"] == 2
    assert m["appliance_replicate_bytes_total"] == first["bytes_uploaded"] + second["bytes_uploaded"]
    assert m["appliance_replicate_blobs_skipped_total"] == second["skipped"]
    assert m["appliance_replicate_upload_duration_seconds_count"] == 2
    assert node.replicator.step()["action"] == "up-to-date"
    assert _textfile(node)["appliance_replicate_uploads_total"] == 2


def test_wrong_credentials_count_as_failures_then_retries_in_remote_status(tmp_path: Path, server: S3Server) -> None:
    node = LocalNode.create(tmp_path / "node")
    node.seed()
    SigningKey.generate().save(node.root / "head.key")
    remote = remote_json(node.root / "remote.json", server, head_key="head.key", head_trust=["head.key.pub"],
                         state_dir="replicate-state", retry_base=0.01, retry_cap=0.02, max_attempts=1)  # fmt: skip
    creds = node.root / "s3-credentials.json"
    good = creds.read_text()
    wrong = json.loads(good)
    wrong["access_key_id"] = wrong["access_key_id"][:-1] + ("X" if wrong["access_key_id"][-1] != "X" else "Y")
    creds.write_text(json.dumps(wrong))
    for _ in range(2):  # two failed passes: the second is a retry
        assert node.cli("replicate", "--once", "--remote", str(remote)).returncode == 18  # as `remote pull`
        time.sleep(0.05)
    code, status = node.cli_json("remote", "status", "--remote", str(remote))
    m = status["metrics"]  # the local queue is still shown; the exit code is the credentials' (18), as pull's
    assert code == 18 and status["pending"] is True and status["remote_head"]["exit_code"] == 18
    assert m["appliance_replicate_failures_total"] == 2 and m["appliance_replicate_retries_total"] == 1
    assert m["appliance_replicate_uploads_total"] == 0 and m["appliance_replicate_queue_depth"] == 1
    assert m["appliance_replicate_attempts"] == 2 and "appliance_replicate_last_success_timestamp_seconds" not in m
    creds.write_text(good)
    assert node.cli("replicate", "--once", "--remote", str(remote)).returncode == 0
    code, status = node.cli_json("remote", "status", "--remote", str(remote))
    m = status["metrics"]
    assert code == 0 and status["pending"] is False
    assert m["appliance_replicate_uploads_total"] == 1 and m["appliance_replicate_retries_total"] == 2
    assert m["appliance_replicate_failures_total"] == 2 and m["appliance_replicate_queue_depth"] == 0
    assert m["appliance_replicate_attempts"] == 0 and m["appliance_replicate_bytes_total"] > 0
    assert m["appliance_replicate_upload_duration_seconds_count"] == 1
