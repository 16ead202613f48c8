"""Bucket retention (``appliance remote prune``) against the real S3 server (``rclone serve s3`` on loopback).

A replica holds every generation the replicator pushed; prune deletes, under the node's own device
prefix only, the bundles beyond the newest N (never the head's, never one at or above the floor),
then the blobs no kept bundle needs. After every prune the bucket must still restore the head's
checkpoint bit-exactly; keys that are not the replica's are never touched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance import api
from appliance.cli.localnode import LocalNode
from appliance.errors import PruneRefusedError, UsageError
from appliance.format.portable import required_blobs
from appliance.format.statement import parse_bundle, parse_statement
from appliance.remote.prune import PruneReport, prune_replica
from appliance.signing import SigningKey
from appliance.store.store import Store
from tests.integration.conftest import nudge, same, weights
from tests.integration.remote_node import Node
from tests.integration.s3server import S3Server, remote_json

pytestmark = pytest.mark.integration


def _replicate(node: Node, state: dict[str, torch.Tensor]) -> None:
    api.save(node.store, state, node.key, full=True)  # full: a frame is named by its tensor bytes alone
    assert node.replicator.step()["action"] == "replicated"


def _history(node: Node, n: int) -> list[dict[str, torch.Tensor]]:
    states = [weights(1)]
    for i in range(2, n + 1):
        states.append(nudge(states[-1], 0.01, i))
    for state in states:
        _replicate(node, state)
    return states


def _prune(node: Node, *, keep: int, floor: int, **options: Any) -> PruneReport:
    return prune_replica(node.objects, head_keys=[node.head_key.public], device="node-1", model="test-model",
                         floor=floor, keep=keep, **options)  # fmt: skip


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refs(node: Node, generation: int) -> set[str]:
    """The blob digests (hex) the replica's bundle of ``generation`` names."""
    path = next((node.bucket() / "bundles").glob(f"{generation:020d}-*.json"))
    manifest = parse_statement(parse_bundle(path.read_bytes()).payload)
    return {b.digest.hex for b in required_blobs(manifest)}


def _blobs(node: Node) -> set[str]:
    return {p.name for p in (node.bucket() / "blobs").rglob("*") if p.is_file()}


def _generations(node: Node) -> list[int]:
    return sorted(int(p.name.split("-")[0]) for p in (node.bucket() / "bundles").iterdir())


def _restore_from_the_bucket(node: Node, tmp: Path, name: str) -> dict[str, torch.Tensor]:
    """A node that lost both slots imports the head's checkpoint from the bucket (every blob hashed as read)."""
    fresh = Node(tmp, node.server, node.key, node.head_key, name=name)
    fresh.pull()
    return api.load(fresh.store).tensors


def test_prune_keeps_the_newest_bundles_and_the_bucket_restorable(
    tmp_path: Path, server: S3Server, key: SigningKey
) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    states = _history(node, 4)
    refs = {g: _refs(node, g) for g in range(1, 5)}
    shared = refs[1] & refs[4]  # blobs of an unchanged tensor: named by pruned and kept bundles alike
    only_old = (refs[1] | refs[2]) - refs[3] - refs[4]
    assert shared and only_old
    report = _prune(node, keep=2, floor=4)
    assert _generations(node) == [3, 4] and len(report.bundles_deleted) == 2 and report.head_generation == 4
    blobs = _blobs(node)
    assert shared <= blobs and refs[3] <= blobs and refs[4] <= blobs  # both kept checkpoints stay complete
    assert not only_old & blobs and report.blobs_deleted == len(only_old)
    assert same(_restore_from_the_bucket(node, tmp_path, "after-prune"), states[-1])
    again = _prune(node, keep=2, floor=4)  # idempotent: nothing more to delete
    assert again.bundles_deleted == [] and again.blobs_deleted == 0


def test_dry_run_deletes_nothing(tmp_path: Path, server: S3Server, key: SigningKey) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    _history(node, 3)
    before = _files(server.bucket_dir())
    report = _prune(node, keep=1, floor=3, dry_run=True)
    assert report.dry_run and len(report.bundles_deleted) == 2 and report.blobs_deleted > 0
    assert _files(server.bucket_dir()) == before


def test_bundles_at_or_above_the_floor_and_the_heads_are_never_pruned(
    tmp_path: Path, server: S3Server, key: SigningKey
) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    _history(node, 4)
    report = _prune(node, keep=1, floor=2)  # generations 2 and 3 could still be restored by the node
    assert _generations(node) == [2, 3, 4] and len(report.bundles_deleted) == 1
    with pytest.raises(UsageError):
        _prune(node, keep=0, floor=4)  # --keep 0: refused before anything is deleted


def test_junk_keys_and_other_devices_are_left_alone(tmp_path: Path, server: S3Server, key: SigningKey) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    _history(node, 3)
    hexa = "ab" * 32
    mine = ["notes.txt", "blobs/zz/nothex", f"blobs/cd/{hexa}", "bundles/readme.txt",
            f"bundles/00000000000000000001-{hexa}.json.bak", f"blobs/ab/{hexa}.tmp", "quarantine/x"]  # fmt: skip
    others = [f"appliance/devices/node-2/blobs/ab/{hexa}", "appliance/devices/node-2/bundles/x.json", "root.txt"]
    old = time.time() - 7 * 86400
    for rel in [f"{node.config.device_prefix}/{k}" for k in mine] + others:
        path = server.bucket_dir() / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not the replica's")
        os.utime(path, (old, old))  # old: the age rule must not apply to keys that are not ours
    time.sleep(0.3)  # rclone's directory cache (100 ms)
    report = _prune(node, keep=1, floor=3)
    assert report.not_ours == len(mine) and report.bundles_deleted
    for rel in [f"{node.config.device_prefix}/{k}" for k in mine] + others:
        assert (server.bucket_dir() / rel).read_bytes() == b"not the replica's", rel


def test_a_concurrent_uploads_blobs_survive_and_orphans_are_collected(
    tmp_path: Path, server: S3Server, key: SigningKey
) -> None:
    import hashlib

    node = Node(tmp_path, server, key, SigningKey.generate())
    _history(node, 3)
    planted = {}
    for name, when in (("in-flight", time.time() + 3600), ("orphan", time.time() - 3600)):
        data = name.encode() * 100
        digest = hashlib.sha256(data).hexdigest()
        path = node.bucket() / "blobs" / digest[:2] / digest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (when, when))
        planted[name] = digest
    time.sleep(0.3)
    _prune(node, keep=1, floor=3)
    blobs = _blobs(node)
    assert planted["in-flight"] in blobs  # uploaded after the newest kept bundle: its bundle may still come
    assert planted["orphan"] not in blobs  # named by no bundle and older than the newest kept bundle


def test_a_checkpoint_uploaded_during_the_prune_keeps_the_old_blobs_it_reuses(
    tmp_path: Path, server: S3Server, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    states = _history(node, 4)
    reverted = dict(states[0])  # the next checkpoint goes back to generation 1's tensors: its blobs exist
    delete, raced = node.objects.delete, []

    def racing(name: str) -> None:
        if not raced:  # the replicator uploads generation 5 between the prune's listing and its deletions
            raced.append(name)
            _replicate(node, reverted)
        delete(name)

    monkeypatch.setattr(node.objects, "delete", racing)
    report = _prune(node, keep=2, floor=4)
    assert raced and report.late_bundles and 5 in _generations(node)
    assert _refs(node, 5) <= _blobs(node)  # generation 1's blobs, now named by generation 5, all kept
    assert same(_restore_from_the_bucket(node, tmp_path, "after-race"), reverted)


def test_prune_refuses_without_a_verified_head_or_while_an_upload_is_pending(
    tmp_path: Path, server: S3Server, key: SigningKey
) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    _history(node, 2)
    before = _files(server.bucket_dir())
    with pytest.raises(PruneRefusedError, match="pending"):
        _prune(node, keep=1, floor=2, pending=3)
    with pytest.raises(PruneRefusedError, match="head"):
        prune_replica(node.objects, head_keys=[SigningKey.generate().public], device="node-1", model="test-model",
                      floor=0, keep=1)  # fmt: skip
    (node.bucket() / "head.json").unlink()
    time.sleep(0.3)  # rclone's directory cache (100 ms): else it answers 500 (RemoteServerError 72, not a refusal)
    with pytest.raises(PruneRefusedError):
        _prune(node, keep=1, floor=2)
    after = _files(server.bucket_dir())
    assert after == {k: v for k, v in before.items() if not k.endswith("head.json")}


def test_cli_prune_then_a_node_that_lost_both_slots_pulls_the_head_back(tmp_path: Path, server: S3Server) -> None:
    from appliance.node.floor import FileFloor

    node = LocalNode.create(tmp_path / "node")
    head = SigningKey.generate()
    head.save(node.root / "head.key")
    remote = remote_json(node.root / "remote.json", server, head_key="head.key", head_trust=["head.key.pub"],
                         state_dir="replicate-state", restore_at_boot=False)  # fmt: skip
    node.seed()
    replicate = ["replicate", "--once", "--remote", str(remote)]
    assert node.cli_json(*replicate)[0] == 0
    store, device_key = Store.open(node.root / "store"), SigningKey.load(node.root / "keys" / "device.key")
    for _ in (2, 3, 4):
        loaded = api.load(store)
        tensors = {n: (t + 1 if t.is_floating_point() else t) for n, t in loaded.tensors.items()}
        api.save(store, tensors, device_key, dict(loaded.metadata))
        assert node.cli_json(*replicate)[0] == 0
    expected = api.load(Store.open(node.root / "store")).tensors
    FileFloor(node.config.floor_file).raise_to(3)  # as boot raises it once generations 3 and 4 proved GOOD
    code, dry = node.cli_json("remote", "prune", "--remote", str(remote), "--keep", "1", "--dry-run")
    assert code == 0 and dry["dry_run"] and len(dry["bundles_deleted"]) == 2 and dry["blobs_deleted"] > 0, dry
    code, done = node.cli_json("remote", "prune", "--remote", str(remote), "--keep", "1")
    assert code == 0 and done["head_generation"] == 4 and done["bundles_deleted"] == dry["bundles_deleted"], done
    assert len(done["bundles_kept"]) == 2  # 3 (at the floor) and 4 (the head)
    for slot in ("A", "B"):  # both slots lost
        for sub in ("frames", "checkpoints"):
            for path in (node.root / "store" / slot / sub).iterdir():
                path.unlink()
    code, pulled = node.cli_json("remote", "pull", "--remote", str(remote))
    assert code == 0 and pulled["generation"] == 4 and pulled["from_source"] == pulled["blobs"], pulled
    assert same(api.load(Store.open(node.root / "store")).tensors, expected)
