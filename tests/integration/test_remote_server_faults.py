"""5xx, SlowDown and slow responses from the object store; multipart uploads cut and resumed.

The server is the real ``rclone serve s3``; the faults come from the proxy of
``tests/integration/s3faults.py`` in front of it (a stand-in only inside that seam). Every test
checks the guarantee, not the mechanism: the replica or the pulled checkpoint is bit-exact, no
head names an incomplete checkpoint, nothing local is lost, and the next pass resumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance import api
from appliance.errors import RemoteServerError
from appliance.format.remote import HEAD_KEY
from appliance.signing import SigningKey
from tests.integration.conftest import same, weights
from tests.integration.remote_node import Node
from tests.integration.s3faults import Fault, FaultProxy, fault_proxy
from tests.integration.s3server import BUCKET, S3Server

pytestmark = [pytest.mark.integration, pytest.mark.faults]
MiB = 1024 * 1024


@pytest.fixture
def proxy(server: S3Server) -> Iterator[FaultProxy]:
    with fault_proxy(server) as p:
        yield p


@pytest.fixture
def head_key() -> SigningKey:
    return SigningKey.generate()


def _node(tmp: Path, server: S3Server, proxy: FaultProxy, key: SigningKey, head_key: SigningKey, name: str,
          **kw: Any) -> Node:  # fmt: skip
    settings: dict[str, Any] = {"read_timeout": 1.0, "max_attempts": 3, **kw}
    return Node(tmp, server, key, head_key, name, endpoint=proxy.endpoint, **settings)


def _past_backoff(node: Node) -> None:
    node.replicator.clock = lambda: 1e12


def test_5xx_slowdown_and_stalls_are_retried_and_the_replica_is_exact(
    tmp_path: Path, server: S3Server, proxy: FaultProxy, key: SigningKey, head_key: SigningKey
) -> None:
    node = _node(tmp_path, server, proxy, key, head_key, "node")
    state = weights(1)
    node.save(state)
    proxy.add(Fault("503", "PUT", "/blobs/", times=3), Fault("500", "PUT", "/bundles/", times=1),
              Fault("stall", "PUT", HEAD_KEY, times=1, stall=2.0))  # fmt: skip
    assert node.replicator.step()["action"] == "replicated"
    assert proxy.fired("503") == 3 and proxy.fired("500") == 1 and proxy.fired("stall") == 1
    fresh = _node(tmp_path, server, proxy, key, head_key, "fresh")
    proxy.add(Fault("500", "GET", HEAD_KEY, times=1), Fault("503", "GET", "/blobs/", times=2, after=1),
              Fault("stall", "GET", "/blobs/", times=1, after=4, stall=2.0),
              Fault("truncate", "GET", "/blobs/", times=1, after=6, stall=2.0))  # fmt: skip
    result = fresh.pull()
    assert result.from_source == result.blobs > 8
    assert proxy.fired("truncate") == 1 and fresh.objects.body_retries >= 1  # a body cut mid-way was fetched again
    assert same(api.load(fresh.store).tensors, state)


def test_a_server_failing_every_put_is_a_typed_failure_and_the_next_pass_resumes(
    tmp_path: Path, server: S3Server, proxy: FaultProxy, key: SigningKey, head_key: SigningKey
) -> None:
    node = _node(tmp_path, server, proxy, key, head_key, "node")
    node.save(weights(1))
    node.replicator.retry_base, node.replicator.retry_cap = 30.0, 60.0
    node.replicator.rand = lambda: 0.5  # jitter pinned: the next try is 15 s away
    proxy.add(Fault("503", "PUT", "/blobs/", times=-1, after=3))
    failed = node.replicator.step()
    assert failed["action"] == "failed" and failed["error"] == "RemoteServerError" and failed["retry_in"] == 15.0
    assert not (node.bucket() / HEAD_KEY).exists()  # no head names the incomplete checkpoint
    assert node.replicator.step()["action"] == "waiting"  # backoff between passes
    forced = node.replicator.step(now=True)  # `replicate --once`: the operator's pass is not deferred
    assert forced["action"] == "failed" and forced["error"] == "RemoteServerError"
    proxy.clear()
    _past_backoff(node)
    done = node.replicator.step()
    assert done["action"] == "replicated" and done["skipped"] >= 3  # resumed, not restarted
    fresh = _node(tmp_path, server, proxy, key, head_key, "fresh")
    fresh.pull()
    assert same(api.load(fresh.store).tensors, weights(1))


def test_a_pull_that_keeps_stalling_fails_typed_keeps_local_state_and_resumes(
    tmp_path: Path, server: S3Server, proxy: FaultProxy, key: SigningKey, head_key: SigningKey
) -> None:
    node = _node(tmp_path, server, proxy, key, head_key, "node")
    node.save(weights(0))
    node.save(weights(1))  # generation 2: newer than the puller's own
    node.replicator.step()
    puller = _node(tmp_path, server, proxy, key, head_key, "puller", max_attempts=2)
    puller.save(weights(9))
    before = puller.snapshot()
    proxy.add(Fault("stall", "GET", "/blobs/", times=-1, after=3, stall=1.5))
    with pytest.raises(RemoteServerError):
        puller.pull()
    assert puller.snapshot() == before and same(api.load(puller.store).tensors, weights(9))
    proxy.clear()
    result = puller.pull()
    assert result.kept >= 3 and result.from_source <= result.blobs - 3  # what came before the stall was kept
    assert same(api.load(puller.store).tensors, weights(1))


# --- multipart ------------------------------------------------------------------------------------


def _big_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"w": torch.randn(3 * MiB, generator=g)}  # 12 MiB of float32: one frame, ~11 MiB compressed


def _big_node(tmp: Path, server: S3Server, proxy: FaultProxy, key: SigningKey, head_key: SigningKey,
              name: str = "node") -> Node:  # fmt: skip
    node = _node(tmp, server, proxy, key, head_key, name, frame_size=16 * MiB, read_timeout=10.0)
    node.objects.multipart_threshold = node.objects.part_size = 5 * MiB  # S3's minimum part size
    return node


def _uploads(node: Node) -> list[dict[str, Any]]:
    page = node.objects.client.list_multipart_uploads(Bucket=BUCKET, Prefix=node.objects.prefix + "/")
    return list(page.get("Uploads", []))


def _large_blob(node: Node) -> Path:
    return max((p for p in (node.bucket() / "blobs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_multipart_upload_cut_by_5xx_resumes_without_resending_parts(
    tmp_path: Path, server: S3Server, proxy: FaultProxy, key: SigningKey, head_key: SigningKey
) -> None:
    node = _big_node(tmp_path, server, proxy, key, head_key)
    node.save(_big_state())
    proxy.add(Fault("500", "PUT", "partNumber=3", times=-1))
    failed = node.replicator.step()
    assert failed["action"] == "failed" and failed["error"] == "RemoteServerError", (failed, proxy.seen)
    held = _uploads(node)
    assert len(held) == 1 and not (node.bucket() / HEAD_KEY).exists()
    parts = node.objects.client.list_parts(Bucket=BUCKET, Key=held[0]["Key"], UploadId=held[0]["UploadId"])
    assert [p["PartNumber"] for p in parts["Parts"]] == [1, 2]
    proxy.clear()
    mark = len(proxy.seen)
    _past_backoff(node)
    assert node.replicator.step()["action"] == "replicated"
    sent = [path for method, path, _ in proxy.seen[mark:] if method == "PUT" and "partNumber=" in path]
    assert len(sent) == 1 and "partNumber=3" in sent[0]  # parts 1 and 2 were not sent again
    assert _uploads(node) == []  # completed: nothing left half-done on the server
    blob = _large_blob(node)
    assert blob.stat().st_size > 10 * MiB and hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    fresh = _node(tmp_path, server, proxy, key, head_key, "fresh", frame_size=16 * MiB)
    fresh.pull()
    assert same(api.load(fresh.store).tensors, _big_state())


def test_server_dying_mid_multipart_and_a_foreign_upload_are_aborted_cleanly(
    tmp_path: Path, server: S3Server, proxy: FaultProxy, key: SigningKey, head_key: SigningKey
) -> None:
    node = _big_node(tmp_path, server, proxy, key, head_key)
    node.save(_big_state())
    calls: list[int] = []

    def die_on_second_part(params: dict[str, Any], **_: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            server.kill()

    node.objects.client.meta.events.register("before-call.s3.UploadPart", die_on_second_part)
    failed = node.replicator.step()
    assert failed["action"] == "failed" and failed["error"] in ("SourceUnavailableError", "RemoteServerError")
    node.objects.client.meta.events.unregister("before-call.s3.UploadPart", die_on_second_part)
    server.start()  # the restarted server forgot the upload
    # someone left an upload of other bytes under the same key: it is aborted, never mixed in
    large = node.store.select().opened.verified.manifest
    digest = max(large.frame_index().values(), key=lambda f: f.size).digest.hex
    blob_key = f"{node.objects.prefix}/blobs/{digest[:2]}/{digest}"
    stray = node.objects.client.create_multipart_upload(Bucket=BUCKET, Key=blob_key)["UploadId"]
    node.objects.client.upload_part(Bucket=BUCKET, Key=blob_key, UploadId=stray, PartNumber=1, Body=b"\0" * 5 * MiB)
    _past_backoff(node)
    assert node.replicator.step()["action"] == "replicated"
    assert _uploads(node) == []
    blob = _large_blob(node)
    assert blob.name == digest and hashlib.sha256(blob.read_bytes()).hexdigest() == digest
