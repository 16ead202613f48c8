"""A staging the channel program handed off, damaged before the store's writer imported it, is made whole again.

docs/design.md §11.6: the channel program remembers the heads it handed off (anti-replay), so before
this fix a staged file removed, cut short or altered after the hand-off was never staged again: the
persistence watchdog failed (48, 35) on every pass and ``channel follow`` said "(nothing new)" until a
newer release was published (new-user trial 4, N1). Now a pass whose head was handed off but is not
in the store verifies the staging, downloads or writes again what is not whole, re-writes the head
(a new hand-off the watchdog tries at once) and never lowers its heads-seen memory; the watchdog's
remedy names that repair, not an export. The property test draws which staged files are damaged and
how. A real S3 server, real CLI processes (``persist --once``, ``channel follow``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.cli.localnode import LocalNode
from appliance.cli.main import main
from tests.integration import test_channel
from tests.integration.test_channel import Fleet
from tests.integration.test_channel_inbox import _generations, _node, _other_weights_release, _persist_once

pytestmark = pytest.mark.integration
fleet = test_channel.fleet  # the shared fixture (stops every node it started)

RELEASE = 1001  # _other_weights_release(…, 1000) commits above its floor


def _inbox(node: LocalNode) -> Path:
    return node.root / "channel-inbox"


def _seen_file(node: LocalNode) -> Path:
    """The channel program's heads-seen memory (its anti-replay state) in remote.json's state_dir."""
    return node.root / "replicate-state" / "heads-seen.json"


def _follow(node: LocalNode, code: int = 0) -> dict[str, Any]:
    got, out = node.cli_json("channel", "follow", "--remote", str(node.root / "remote.json"))
    assert got == code, out
    return out


def _snapshot(inbox: Path) -> dict[str, bytes]:
    return {str(p.relative_to(inbox)): p.read_bytes() for p in sorted(inbox.rglob("*")) if p.is_file()}


def _assert_whole(node: LocalNode, pristine: dict[str, bytes]) -> None:
    """The inbox holds the staging as first staged, except blobs a slot now holds verified (a failed import
    copied them there; the import reads those from the slot), and nothing else."""
    from appliance.format.digest import Digest
    from appliance.store.layout import frame_path

    now = _snapshot(_inbox(node))
    assert set(now) <= set(pristine) and all(now[k] == pristine[k] for k in now), sorted(set(now) ^ set(pristine))
    for key in set(pristine) - set(now):
        digest = Digest(key.rpartition("/")[2])
        held = [node.root / "store" / frame_path(slot, digest) for slot in "AB"]
        assert key.startswith("blobs/") and any(h.is_file() and h.read_bytes() == pristine[key] for h in held), key


def _blobs(inbox: Path) -> list[Path]:
    return sorted(p for p in (inbox / "blobs").rglob("*") if p.is_file())


def _bundle(inbox: Path) -> Path:
    return next((inbox / "bundles").iterdir())


def _staged(fleet: Fleet, name: str) -> tuple[LocalNode, dict[str, bytes], bytes]:
    """A split node with a release staged (blobs crossed the network), not imported: (node, its staging, the
    channel program's heads-seen bytes)."""
    node = _node(fleet, name)
    assert fleet.publish(_other_weights_release(fleet, node, 1000))[0] == 0
    staged = _follow(node)
    assert staged["staged"] and staged["downloaded"] > 0 and staged["generation"] == RELEASE, staged
    return node, _snapshot(_inbox(node)), _seen_file(node).read_bytes()


def _assert_imported_then_tidied(node: LocalNode, before: list[int]) -> None:
    imported = _persist_once(node)["channel_import"]
    assert imported["status"] == "imported" and imported["generation"] == RELEASE, imported
    assert _generations(node) == [*before, RELEASE]
    assert _follow(node)["tidied"] and not [p for p in _inbox(node).rglob("*") if p.is_file()]


# --- the trial's case, kept as a named regression ------------------------------------------------


def test_regression_trial4_n1_a_staged_blob_truncated_to_100_bytes_is_restaged_then_imported(fleet: Fleet) -> None:
    node, pristine, seen = _staged(fleet, "node-n1")
    inbox, before = _inbox(node), _generations(node)
    blob = _blobs(inbox)[0]
    with blob.open("r+b") as f:
        f.truncate(100)

    failed = _persist_once(node, 48)["channel_import"]
    assert failed["status"] == "failed" and failed["error"] == "PartialCheckpointError", failed
    assert "has 100 bytes" in failed["problem"]
    remedy = failed["remedy"]
    assert "export" not in remedy and "channel program" in remedy and "`appliance channel follow`" in remedy, remedy
    assert "disk" in remedy  # damage that returns after a fresh staging points at the disk
    assert node.events("channel.import_failed")[-1]["fields"]["remedy"] == remedy
    assert _generations(node) == before

    text = node.cli("channel", "follow", "--remote", str(node.root / "remote.json"))
    assert text.returncode == 0 and "staged again" in text.stdout and "(nothing new)" not in text.stdout, text.stdout
    assert _snapshot(inbox) == pristine and _seen_file(node).read_bytes() == seen  # never lowered, never replayed
    event = node.events("channel.restaged")[-1]["fields"]
    assert event["downloaded"] == 1 and event["generation"] == RELEASE and "1 blob" in event["repaired"]
    _assert_imported_then_tidied(node, before)


# --- each way a staging can be incomplete ----------------------------------------------------------


def _flip(path: Path, at: int = 0) -> None:
    data = bytearray(path.read_bytes() or b"\0")
    data[at % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int = 100) -> None:
    with path.open("r+b") as f:
        f.truncate(min(size, max(path.stat().st_size - 1, 0)))


def _empty_inbox(inbox: Path) -> None:  # rm -rf inbox/*
    for entry in inbox.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


DAMAGE: dict[str, tuple[Callable[[Path], None], int, str]] = {
    # name: (what it does to the inbox, persist --once's exit before the repair, its channel_import status)
    "blob truncated": (lambda i: _truncate(_blobs(i)[0]), 48, "failed"),
    "blob bytes flipped, same size": (lambda i: _flip(_blobs(i)[-1], 7), 35, "failed"),
    "blob removed": (lambda i: _blobs(i)[0].unlink(), 48, "failed"),
    "bundle truncated": (lambda i: _truncate(_bundle(i)), 48, "failed"),
    "bundle bytes flipped": (lambda i: _flip(_bundle(i), 11), 48, "failed"),
    "bundle removed": (lambda i: _bundle(i).unlink(), 48, "failed"),
    "head removed": (lambda i: (i / "head.json").unlink(), 0, "none"),
    "head truncated": (lambda i: _truncate(i / "head.json"), 49, "refused"),
    "inbox emptied": (_empty_inbox, 0, "none"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_staging_is_repaired_by_the_next_follow_pass_then_imported(fleet: Fleet, damage: str) -> None:
    node, pristine, seen = _staged(fleet, "node-d")
    inbox, before = _inbox(node), _generations(node)
    harm, code, status = DAMAGE[damage]
    harm(inbox)
    assert _persist_once(node, code)["channel_import"]["status"] == status
    assert _generations(node) == before  # nothing committed from a damaged staging

    repaired = _follow(node)
    assert repaired["restaged"] and repaired["staged"] and not repaired["imported"], repaired
    assert repaired["sequence"] == 1 and repaired["repaired"], repaired
    _assert_whole(node, pristine)
    assert _seen_file(node).read_bytes() == seen
    _assert_imported_then_tidied(node, before)


def test_a_whole_staging_is_left_alone_while_it_waits_for_the_watchdog(fleet: Fleet) -> None:
    node, pristine, seen = _staged(fleet, "node-w")
    head = _inbox(node) / "head.json"
    identity = (head.stat().st_ino, head.stat().st_mtime_ns)
    waiting = _follow(node)
    assert waiting["waiting"] and not waiting["staged"] and not waiting.get("restaged"), waiting
    assert (head.stat().st_ino, head.stat().st_mtime_ns) == identity  # not handed off again: nothing to retry
    assert _snapshot(_inbox(node)) == pristine and _seen_file(node).read_bytes() == seen
    text = node.cli("channel", "follow", "--remote", str(node.root / "remote.json"))
    assert "nothing new: staged whole, waiting for the persistence watchdog" in text.stdout, text.stdout


def test_the_watchdog_retries_at_once_when_the_repaired_staging_is_handed_off_again(fleet: Fleet) -> None:
    from appliance.events import EventLog
    from appliance.persist.committer import Committer
    from appliance.persist.daemon import PersistDaemon

    node, _, _ = _staged(fleet, "node-b")
    before = _generations(node)
    _bundle(_inbox(node)).unlink()
    events = EventLog(node.config.event_log, "persist")
    daemon = PersistDaemon(Committer(node.config, events), events, remote_path=node.root / "remote.json")
    failed = daemon.inbox.process()
    assert failed["status"] == "failed" and failed["retry_in_s"] > 0 and "is missing" in failed["problem"], failed
    assert daemon.inbox.process()["status"] == "waiting"  # the same hand-off: backoff
    assert _follow(node)["restaged"]
    imported = daemon.inbox.process()  # a new hand-off (the head re-written): no backoff from the damaged one
    assert imported["status"] == "imported" and imported["generation"] == RELEASE, imported
    assert _generations(node) == [*before, RELEASE]


# --- property: whichever staged files are damaged, and however, one pass makes the staging whole ----------

HOW = ("truncate", "flip", "remove", "empty", "append", "replace")


def _harm(path: Path, how: str, at: int) -> None:
    if how == "truncate":
        _truncate(path, at)
    elif how == "flip":
        _flip(path, at)
    elif how == "remove":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "append":
        path.write_bytes(path.read_bytes() + b"\0junk")
    else:  # replaced by other bytes of the same size
        path.write_bytes(os.urandom(path.stat().st_size))


def _follow_in_process(node: LocalNode) -> dict[str, Any]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["channel", "follow", "--config", str(node.config_path), "--remote", str(node.root / "remote.json"),
                     "--json"])  # fmt: skip
    assert code == 0, buf.getvalue()
    out: dict[str, Any] = json.loads(buf.getvalue())
    return out


def test_property_whichever_staged_files_are_damaged_and_however_one_pass_makes_the_staging_whole(
    fleet: Fleet,
) -> None:
    node, pristine, seen = _staged(fleet, "node-h")
    inbox, before = _inbox(node), _generations(node)
    files = sorted(pristine)  # head.json, bundles/…, blobs/…/…

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        damage=st.lists(
            st.tuples(st.sampled_from(files), st.sampled_from(HOW), st.integers(0, 1 << 20)), min_size=1, max_size=4
        ),
        wipe=st.booleans(),
    )
    def one_pass_repairs(damage: list[tuple[str, str, int]], wipe: bool) -> None:
        if wipe:
            _empty_inbox(inbox)
        for name, how, at in damage:
            if (inbox / name).exists():
                _harm(inbox / name, how, at)
        damaged = _snapshot(inbox) != pristine  # (two flips of one byte undo each other)
        out = _follow_in_process(node)
        assert bool(out.get("restaged")) == damaged and not out["imported"], out
        assert _snapshot(inbox) == pristine  # every staged file whole, nothing else left
        assert _seen_file(node).read_bytes() == seen  # the anti-replay memory neither lowered nor raised
        assert _follow_in_process(node).get("waiting")  # whole: the next pass has nothing to repair

    one_pass_repairs()
    assert _generations(node) == before  # the network side never writes the store
    _assert_imported_then_tidied(node, before)


def test_a_staging_the_node_outgrew_before_importing_it_is_emptied_not_restaged(fleet: Fleet) -> None:
    from appliance import api
    from appliance.signing import SigningKey
    from appliance.store.store import Store

    node, _, seen = _staged(fleet, "node-s")
    store = Store.open(node.root / "store")
    loaded = api.load(store)
    api.save(store, loaded.tensors, SigningKey.load(node.config.signing_key), dict(loaded.metadata), floor=5000)
    _bundle(_inbox(node)).unlink()  # damaged, but the store will never import generation 1001 now

    out = _follow(node)
    assert out["tidied"] and "superseded" in out and not out["staged"], out
    assert not [p for p in _inbox(node).rglob("*") if p.is_file()] and _seen_file(node).read_bytes() == seen
    assert _persist_once(node)["channel_import"]["status"] == "none"
    text = node.cli("channel", "follow", "--remote", str(node.root / "remote.json"))
    assert text.returncode == 0 and "(nothing new" in text.stdout, text.stdout


def test_watch_mode_verifies_a_waiting_staging_again_only_when_a_staged_file_or_the_store_changed(
    fleet: Fleet,
) -> None:
    """``channel follow --watch`` keeps what it verified (``VerifiedStaging``): a poll while the watchdog has not
    imported yet costs the head's GET, not a hash of every staged blob and a request per blob."""
    from appliance.format.inbox import VerifiedStaging
    from appliance.node.config import load_config
    from appliance.remote.config import load_remote
    from appliance.remote.inbox import open_inbox
    from appliance.remote.s3 import ObjectStore
    from appliance.remote.staging import stage_release
    from appliance.remote.state import StateDir
    from appliance.store.store import Store

    node, pristine, seen = _staged(fleet, "node-m")
    config, remote = load_config(node.config_path), load_remote(node.root / "remote.json")
    store = Store.open(config.store, trust_path=config.trust or None)
    objects = ObjectStore(remote, remote.channel_prefix())
    inbox = open_inbox(config.channel_inbox)
    assert inbox is not None
    memo = VerifiedStaging()

    def poll() -> tuple[dict[str, Any], int]:
        before = objects.requests
        out = stage_release(store, objects, channel=remote.channel, state_dir=StateDir(remote.state_dir),
                            inbox=inbox, floor=0, memo=memo)  # fmt: skip
        return out, objects.requests - before

    first, requests = poll()  # nothing remembered yet: verified in full (the bundle and each blob asked for)
    assert first["waiting"] and requests > 2, (first, requests)
    again, requests = poll()
    assert again["waiting"] and requests == 1, (again, requests)  # the head only
    _truncate(_blobs(_inbox(node))[0])
    repaired, _ = poll()
    assert repaired["restaged"] and repaired["downloaded"] == 1, repaired
    assert _snapshot(_inbox(node)) == pristine and _seen_file(node).read_bytes() == seen
    assert poll() == ({**again}, 1)
