"""New-user trial 3 of the object-store replica, against the real S3 server (``rclone serve s3`` on loopback).

Regressions of what a new user hit: wrong credentials gave ``remote prune`` exit 87 with a prune
remedy (``remote pull`` gave 18 and the right one) and ``remote status`` exit 0; a missing or damaged
floor gave a generic remedy; one junk object named like a bundle blocked prune forever without being
named. docs/design.md §11.7.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from appliance import api
from appliance.cli.localnode import LocalNode
from appliance.cli.remote_commands import _prune_text
from appliance.errors import PruneRefusedError
from appliance.remote.prune import PruneReport, prune_replica
from appliance.signing import SigningKey
from appliance.store.store import Store
from tests.integration.conftest import nudge, weights
from tests.integration.remote_node import Node
from tests.integration.s3server import S3Server, remote_json

pytestmark = pytest.mark.integration

SUBCOMMANDS = [
    ("replicate", "--once"),  # the push
    ("remote", "status"),
    ("remote", "pull"),
    ("remote", "prune", "--keep", "1"),
]


def _replicated_node(tmp_path: Path, server: S3Server) -> tuple[LocalNode, Path]:
    node = LocalNode.create(tmp_path / "node")
    SigningKey.generate().save(node.root / "head.key")
    remote = remote_json(node.root / "remote.json", server, head_key="head.key", head_trust=["head.key.pub"],
                         state_dir="replicate-state", restore_at_boot=False, max_attempts=1)  # fmt: skip
    node.seed()
    assert node.cli_json("replicate", "--once", "--remote", str(remote))[0] == 0
    return node, remote


def _wrong_credentials(node: LocalNode) -> Path:
    creds = node.root / "s3-credentials.json"
    wrong = json.loads(creds.read_text())
    wrong["access_key_id"] = wrong["access_key_id"][:-1] + ("X" if wrong["access_key_id"][-1] != "X" else "Y")
    creds.write_text(json.dumps(wrong))
    return creds


def _commit(node: LocalNode) -> None:
    """A new device-signed commit, not yet replicated."""
    store = Store.open(node.root / "store")
    loaded = api.load(store)
    tensors = {n: (t + 1 if t.is_floating_point() else t) for n, t in loaded.tensors.items()}
    api.save(store, tensors, SigningKey.load(node.root / "keys" / "device.key"), dict(loaded.metadata))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_remote_subcommand_maps_refused_credentials_to_pulls_code_and_remedy(
    tmp_path: Path, server: S3Server
) -> None:
    node, remote = _replicated_node(tmp_path, server)
    _commit(node)  # something to push: `replicate --once` reaches the bucket (prune: the bucket before the queue)
    creds = _wrong_credentials(node)
    before = _files(server.bucket_dir())
    remedies = {}
    for sub in SUBCOMMANDS:
        done = node.cli(*sub, "--remote", str(remote))
        assert done.returncode == 18, (sub, done.stdout, done.stderr)
        remedies[sub] = done.stderr.split("remedy: ", 1)[1].strip()
        code, data = node.cli_json(*sub, "--remote", str(remote))
        error = data["remote_head"] if sub == ("remote", "status") else data
        assert code == 18 and error["exit_code"] == 18 and error["remedy"] == remedies[sub], (sub, data)
    pull = remedies[("remote", "pull")]
    assert str(creds) in pull and "bucket's policy" in pull
    assert all(r == pull for r in remedies.values()), remedies
    assert _files(server.bucket_dir()) == before  # prune refused by the bucket: nothing deleted


def test_replicate_once_after_a_refusal_tries_again_and_is_not_answered_by_the_loops_backoff(
    tmp_path: Path, server: S3Server
) -> None:
    """CI found ``replicate --once`` exiting 0 ("waiting") right after a refused push: the loop's backoff."""
    node, remote = _replicated_node(tmp_path, server)
    cfg = json.loads(remote.read_text())
    remote.write_text(json.dumps({**cfg, "retry_base": 600.0, "retry_cap": 3600.0}))  # a retry far away
    _commit(node)
    _wrong_credentials(node)
    for _ in range(3):
        code, data = node.cli_json("replicate", "--once", "--remote", str(remote))
        assert code == 18 and data["exit_code"] == 18, data
    queue = json.loads((node.root / "replicate-state" / "replication.json").read_text())
    assert queue["attempts"] == 3 and queue["next_attempt_at"] > time.time() + 1  # the loop still backs off


def test_remote_status_exits_with_the_credential_code_when_the_bucket_refuses_them(
    tmp_path: Path, server: S3Server
) -> None:
    node, remote = _replicated_node(tmp_path, server)
    assert node.cli_json("remote", "status", "--remote", str(remote))[0] == 0
    _wrong_credentials(node)
    code, status = node.cli_json("remote", "status", "--remote", str(remote))
    assert code == 18 and status["remote_head"]["error"] == "ConfigError"
    assert status["replicated"]["generation"] == 1 and status["pending"] is False  # the local queue still shown
    done = node.cli("remote", "status", "--remote", str(remote))
    assert done.returncode == 18 and "pending: no" in done.stdout and "remedy: check the access key" in done.stderr


FLOOR_DAMAGE = ["missing", "damaged", "symlink", "directory"]


def _damage_floor(floor: Path, damage: str, garbage: bytes) -> None:
    """Trial 3 (missing, damaged) and trial 4 (a symlink is followed; a directory was told "run as root")."""
    if damage == "missing":
        floor.unlink()
    elif damage == "damaged":
        floor.write_bytes(garbage)
    elif damage == "symlink":  # a valid floor file elsewhere: never followed, read as damaged
        real = floor.with_name("elsewhere.json")
        floor.rename(real)
        floor.symlink_to(real)
    else:
        floor.unlink()
        floor.mkdir()


def _check_floor_remedy(remedy: str, floor: Path, damage: str, command: str) -> None:
    assert str(floor) in remedy and "NODE.json" not in remedy, remedy  # the node's own config path, not a placeholder
    if damage == "directory":
        assert f"remove {floor}" in remedy and f"then {command} again" in remedy, remedy
    else:
        state = "missing" if damage == "missing" else "damaged"
        assert (
            f"is {state}" in remedy and f"floor.{state}" in remedy and "boot rebuilds it from the slot states" in remedy
        )
    assert "as root" not in remedy  # root or not, an unreadable floor is not a permission problem here


@pytest.mark.parametrize("damage", FLOOR_DAMAGE)
def test_a_missing_or_damaged_floor_refuses_prune_naming_its_path_and_boots_rebuild(
    tmp_path: Path, server: S3Server, damage: str
) -> None:
    node, remote = _replicated_node(tmp_path, server)
    floor = Path(node.config.floor_file)
    _damage_floor(floor, damage, b'{"format": "appliance.floor", "version": 1, "floor": "x"}\n')
    before = _files(server.bucket_dir())
    code, err = node.cli_json("remote", "prune", "--remote", str(remote), "--keep", "1")
    assert code == 87 and err["error"] == "PruneRefusedError" and "nothing was deleted" in err["problem"], err
    _check_floor_remedy(err["remedy"], floor, damage, "prune")
    assert _files(server.bucket_dir()) == before


@pytest.mark.parametrize("damage", FLOOR_DAMAGE)
def test_a_missing_or_damaged_floor_refuses_pull_typed_never_as_floor_0(
    tmp_path: Path, server: S3Server, damage: str
) -> None:
    """Pull compares the bucket head against the floor: an unreadable floor is a typed refusal (88) naming the
    path and boot's rebuild, not a traceback and never floor 0; the store is left exactly as it was."""
    node, remote = _replicated_node(tmp_path, server)
    floor = Path(node.config.floor_file)
    _damage_floor(floor, damage, b"\x00garbage")
    before = _files(node.root / "store")
    code, err = node.cli_json("remote", "pull", "--remote", str(remote))
    assert code == 88 and err["error"] == "FloorUnavailableError" and "nothing was pulled" in err["problem"], err
    _check_floor_remedy(err["remedy"], floor, damage, "pull")
    if damage == "symlink":
        assert "symbolic link" in err["problem"]
    assert _files(node.root / "store") == before
    done = node.cli("remote", "pull", "--remote", str(remote))
    assert done.returncode == 88 and "Traceback" not in done.stderr and "remedy: " in done.stderr


def _history(node: Node, n: int) -> None:
    state = weights(1)
    for i in range(1, n + 1):
        api.save(node.store, state, node.key, full=True)
        assert node.replicator.step()["action"] == "replicated"
        state = nudge(state, 0.01, i + 1)


def _prune(node: Node, *, dry_run: bool = False) -> PruneReport:
    return prune_replica(node.objects, head_keys=[node.head_key.public], device="node-1", model="test-model",
                         floor=3, keep=1, dry_run=dry_run)  # fmt: skip


def test_a_junk_object_named_like_a_bundle_neither_blocks_prune_nor_is_deleted_and_is_named(
    tmp_path: Path, server: S3Server, key: SigningKey
) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    _history(node, 3)
    junk = {f"bundles/{99:020d}-{'ab' * 32}.json": b"not a bundle",  # the newest name: was kept, then refused
            f"bundles/{1:020d}-{'cd' * 32}.json": b"\x00" * 10}  # an old name: was pruned, i.e. deleted  # fmt: skip
    for rel, data in junk.items():
        (node.bucket() / rel).write_bytes(data)
    time.sleep(0.3)  # rclone's directory cache (100 ms)
    report = _prune(node)
    assert sorted(report.unverified) == sorted(junk) and len(report.bundles_deleted) == 2  # generations 1 and 2
    assert all("SHA-256" in problem for problem in report.unverified.values())
    for rel, data in junk.items():
        assert (node.bucket() / rel).read_bytes() == data  # never deleted: not proven ours
    text = _prune_text(report.to_dict())
    assert "deleted 2 bundle(s)" in text and all(rel in text for rel in junk)
    again = _prune(node)  # nothing left to delete: the wording says so, and still names the junk
    text = _prune_text(again.to_dict())
    assert again.bundles_deleted == [] and again.blobs_deleted == 0 and "deleted nothing" in text
    assert "nothing more" not in text and all(rel in text for rel in junk)
    assert "nothing to delete" in _prune_text(_prune(node, dry_run=True).to_dict())


def test_a_head_bundle_that_does_not_verify_refuses_prune_naming_its_key(
    tmp_path: Path, server: S3Server, key: SigningKey
) -> None:
    node = Node(tmp_path, server, key, SigningKey.generate())
    _history(node, 2)
    head = node.pull_head()
    (node.bucket() / head.bundle.key).write_bytes(b"junk where the head's bundle was")
    time.sleep(0.3)
    before = _files(node.server.bucket_dir())
    with pytest.raises(PruneRefusedError) as refused:
        _prune(node)
    assert head.bundle.key in refused.value.problem and "nothing was deleted" in refused.value.problem
    assert "nothing more" not in refused.value.problem
    assert _files(node.server.bucket_dir()) == before


def test_a_checkpoint_committed_but_not_yet_replicated_refuses_prune_as_status_shows_it_pending(
    tmp_path: Path, server: S3Server
) -> None:
    node, remote = _replicated_node(tmp_path, server)
    _commit(node)
    code, status = node.cli_json("remote", "status", "--remote", str(remote))
    assert code == 0 and status["pending"] is True and status["pending_upload"] == 2
    assert status["pending_generation"] is None  # the replicator has not picked it up yet
    code, err = node.cli_json("remote", "prune", "--remote", str(remote), "--keep", "1", "--dry-run")
    assert code == 87 and "generation 2 pending" in err["problem"], err
    assert node.cli_json("replicate", "--once", "--remote", str(remote))[0] == 0
    code, report = node.cli_json("remote", "prune", "--remote", str(remote), "--keep", "1", "--dry-run")
    assert code == 0 and report["head_generation"] == 2, report
