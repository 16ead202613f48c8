"""The fleet channel's hand-off: nothing the network side stages is trusted by the store's writer.

With node.json ``channel_inbox`` (production), ``appliance channel follow`` only stages a release
(blobs the node lacks, bundle, then the signed head) and the persistence watchdog imports it
through the verified import path (docs/design.md §11.6). These tests play a compromised channel
program: it rewrites the inbox between staging and import, and the writer must refuse or retry,
never commit. The real users and modes of the split are ``test_channel_privileges.py`` (root).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance import api
from appliance.cli.localnode import LocalNode
from appliance.cli.main import main
from appliance.format.remote import parse_head_payload
from appliance.remote.head import sign_head
from appliance.signing import SigningKey
from appliance.store.store import Store
from tests.integration import test_channel
from tests.integration.test_channel import Fleet
from tests.integration.test_channel_supervised import split

pytestmark = pytest.mark.integration
fleet = test_channel.fleet  # the shared fixture (stops every node it started)


def _node(fleet: Fleet, name: str) -> LocalNode:
    """A split node that is not running: the test runs each side itself (`channel follow`, `persist --once`)."""
    node = LocalNode.create(fleet.tmp / name)
    node.seed()
    fleet.model = Store.open(node.root / "store").config.model
    assert main(["trust", str(node.root / "store"), "add", str(fleet.tmp / "release.key.pub"), "--role", "release",
                 "--model", fleet.model, "--json"]) == 0  # fmt: skip
    fleet.remote_json(node.root, name)
    return split(node)


def _other_weights_release(fleet: Fleet, node: LocalNode, generation: int) -> Path:
    """A release whose weights differ from the node's, so blobs must cross the network."""
    root = fleet.release(node, generation)
    store = Store.open(root)
    loaded = api.load(store)
    tensors = {name: (t + 1 if t.is_floating_point() else t) for name, t in loaded.tensors.items()}
    api.save(store, tensors, fleet.release_key, dict(loaded.metadata), floor=generation + 1)
    return root


def _generations(node: LocalNode) -> list[int]:
    """Generations with a commit record in either slot (what the store's writer committed)."""
    from appliance.store.discovery import scan

    store = Store.open(node.root / "store")
    return sorted(o.record.generation for o in scan(store.storage, store.limits).records if o.record is not None)


def _persist_once(node: LocalNode, code: int = 0) -> dict[str, Any]:
    """``persist --once --json``; ``code``: its exit status (a refused import alone: the error's code)."""
    got, out = node.cli_json("persist", "--once")
    assert got == code, out
    return out


def test_a_release_forged_in_the_inbox_by_a_compromised_channel_program_is_never_committed(fleet: Fleet) -> None:
    node = _node(fleet, "node-a")
    assert fleet.publish(_other_weights_release(fleet, node, 1000))[0] == 0
    before = _generations(node)
    code, staged = node.cli_json("channel", "follow", "--remote", str(node.root / "remote.json"))
    assert code == 0 and staged["staged"] and not staged["imported"] and staged["generation"] == 1001, staged
    assert staged["downloaded"] > 0  # new weights: blobs crossed the network into the inbox
    assert _generations(node) == before  # the network side never writes the store
    inbox = node.root / "channel-inbox"
    head_file = inbox / "head.json"
    genuine = head_file.read_bytes()
    record = parse_head_payload(base64.b64decode(json.loads(genuine)["payload"]))

    # 1. the head re-signed by a device key the trust store knows (a compromised node's key): refused, typed
    device = SigningKey.generate()
    device.save(fleet.tmp / "device.key")
    assert main(["trust", str(node.root / "store"), "add", str(fleet.tmp / "device.key.pub"), "--role", "device",
                 "--device", "node-b", "--json"]) == 0  # fmt: skip
    head_file.write_bytes(sign_head(record, [device]))
    refused = _persist_once(node, 71)["channel_import"]
    assert refused["status"] == "refused" and refused["error"] == "ChannelRoleError" and refused["remedy"], refused
    event = node.events("channel.import_refused")[-1]["fields"]
    assert event["error"] == "ChannelRoleError" and event["exit_code"] == 71 and event["remedy"] == refused["remedy"]
    # 2. a genuine release head of another channel (the binding to this node's channel is checked again)
    head_file.write_bytes(sign_head(replace(record, name="beta"), [fleet.release_key]))
    assert _persist_once(node, 49)["channel_import"]["error"] == "HeadError"
    assert node.events("channel.import_refused")[-1]["fields"]["error"] == "HeadError"
    # 3. the genuine head, but a staged blob altered: hashed as read, not committed, retried later
    head_file.write_bytes(genuine)
    blob = next(p for p in (inbox / "blobs").rglob("*") if p.is_file())
    good = blob.read_bytes()
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert _persist_once(node, 35)["channel_import"]["status"] == "failed"
    failed = node.events("channel.import_failed")[-1]["fields"]
    assert failed["error"] == "FrameError" and failed["retry_in_s"] > 0 and failed["remedy"]
    assert _generations(node) == before
    # the genuine staging is imported by the writer, verified, into the inactive slot
    blob.write_bytes(good)
    imported = _persist_once(node)["channel_import"]
    assert (
        imported["status"] == "imported"
        and imported["generation"] == 1001
        and imported["imported"]
        and imported["bytes_from_source"] > 0
    ), imported
    assert _generations(node) == [*before, 1001]
    assert node.events("remote.restored")[-1]["component"] == "persist"
    # the channel program's next pass sees the import and empties its inbox
    code, again = node.cli_json("channel", "follow", "--remote", str(node.root / "remote.json"))
    assert code == 0 and again["tidied"] and not head_file.exists()
    assert not [p for p in inbox.rglob("*") if p.is_file()]


def _follow(node: LocalNode) -> dict[str, Any]:
    code, staged = node.cli_json("channel", "follow", "--remote", str(node.root / "remote.json"))
    assert code == 0 and staged["staged"], staged
    return staged


def test_an_older_validly_signed_head_restaged_after_a_newer_import_is_refused_as_a_replay(fleet: Fleet) -> None:
    node = _node(fleet, "node-r")
    inbox, saved = node.root / "channel-inbox", fleet.tmp / "kept-staging"
    assert fleet.publish(fleet.release(node, 1000))[0] == 0
    _follow(node)
    shutil.copytree(inbox, saved)  # a compromised channel program keeps the old staging
    assert _persist_once(node)["channel_import"]["generation"] == 1000
    assert fleet.publish(fleet.release(node, 2000))[0] == 0
    _follow(node)
    newer = _persist_once(node)["channel_import"]
    assert newer["status"] == "imported" and newer["generation"] == 2000 and newer["sequence"] == 2, newer
    before = _generations(node)
    memory = json.loads((node.root / "store" / "channel-seen.json").read_text())
    assert list(memory.values()) == [2]

    shutil.rmtree(inbox)
    shutil.copytree(saved, inbox)  # the old head (sequence 1, generation 1000), validly signed, staged again
    refused = _persist_once(node, 49)["channel_import"]
    assert refused["status"] == "refused" and refused["error"] == "HeadError", refused
    assert "replayed old head" in refused["problem"] and "nothing was imported" in refused["remedy"]
    event = node.events("channel.import_refused")[-1]["fields"]
    assert event["error"] == "HeadError" and event["remedy"] == refused["remedy"]
    assert _generations(node) == before
    assert json.loads((node.root / "store" / "channel-seen.json").read_text()) == memory


def test_an_inbox_others_may_write_is_refused_typed_and_persistence_goes_on(fleet: Fleet) -> None:
    node = _node(fleet, "node-p")
    inbox = node.root / "channel-inbox"
    assert fleet.publish(fleet.release(node, 1000))[0] == 0
    _follow(node)
    before = _generations(node)
    inbox.chmod(0o777)
    refused = _persist_once(node, 90)["channel_import"]
    assert refused["status"] == "refused" and refused["error"] == "InboxPermissionError", refused
    assert str(inbox) in refused["problem"] and "0777" in refused["problem"] and "2750" in refused["problem"]
    assert f"chmod -R g-w,o-rwx {inbox}" in refused["remedy"]
    assert node.events("channel.import_refused")[-1]["fields"]["remedy"] == refused["remedy"]
    text = node.cli("persist", "--once")  # what a technician reads
    assert text.returncode == 90 and "InboxPermissionError (90)" in text.stdout and "chmod -R g-w,o-rwx" in text.stdout
    assert "nothing committed (" not in text.stdout

    # the daemon: refused on every pass without raising, one event per problem, local persistence goes on
    from appliance.events import EventLog
    from appliance.persist.committer import Committer
    from appliance.persist.daemon import PersistDaemon

    events = EventLog(node.config.event_log, "persist")
    daemon = PersistDaemon(Committer(node.config, events), events, remote_path=node.root / "remote.json")
    count = len(node.events("channel.import_refused"))
    assert [daemon.inbox.process()["status"] for _ in range(3)] == ["refused"] * 3
    assert len(node.events("channel.import_refused")) == count + 1
    assert daemon.process() is None  # the outbox pass is untouched by the inbox
    assert _generations(node) == before

    inbox.chmod(0o2750)  # the remedy: the next pass imports, no restart needed
    imported = daemon.inbox.process()
    assert imported["status"] == "imported" and imported["generation"] == 1000, imported
    text = node.cli("persist", "--once")
    assert (
        text.returncode == 0
        and "generation 1000 (sequence 1) from the channel inbox already in the store" in text.stdout
    )


@pytest.mark.root
def test_a_file_another_real_user_planted_in_the_inbox_is_refused_naming_that_user(fleet: Fleet) -> None:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd: plants a file as another real user")
    intruder = "appliance-t3-intruder"
    made = subprocess.run(["useradd", "--system", "--no-create-home", intruder], capture_output=True, timeout=60,
                          check=False).returncode == 0  # fmt: skip
    try:
        pw = pwd.getpwnam(intruder)
        node = _node(fleet, "node-u")
        inbox = node.root / "channel-inbox"
        assert fleet.publish(fleet.release(node, 1000))[0] == 0
        _follow(node)
        for directory in (inbox, inbox / "bundles"):
            directory.chmod(0o777)  # a misconfigured inbox for a moment (the intruder writes through a directory fd)
        fd = os.open(inbox / "bundles", os.O_RDONLY | os.O_DIRECTORY)
        try:
            plant = f"import os; os.write(os.open('planted', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd={fd}), b'x')"
            done = subprocess.run(["/usr/bin/python3", "-c", plant], user=pw.pw_uid, group=pw.pw_gid, pass_fds=(fd,),
                                  cwd="/", capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        finally:
            os.close(fd)
        (inbox / "bundles").chmod(0o750)
        inbox.chmod(0o2750)  # the directories are put right; the intruder's file is still there
        planted = inbox / "bundles" / "planted"
        assert planted.stat().st_uid == pw.pw_uid, done.stderr
        refused = _persist_once(node, 90)["channel_import"]
        assert str(planted) in refused["problem"] and f"uid {pw.pw_uid} ({intruder})" in refused["problem"]
        assert refused["remedy"].startswith("chown -R ") and _generations(node) == [1]
        planted.unlink()
        assert _persist_once(node)["channel_import"]["generation"] == 1000
    finally:
        if made:
            subprocess.run(["userdel", intruder], capture_output=True, timeout=60, check=False)


# --- head.json and the inbox itself go through the same lstat checks (new-user trial 4, N2 and N3) -----------


def _make_link(head: Path) -> str:
    real = head.parent.parent / "head.real"
    head.rename(real)
    head.symlink_to(real)
    return f"`rm {head}`"


def _make_dir(head: Path) -> str:
    head.unlink()
    head.mkdir()
    (head / "inside").write_bytes(b"x")
    return f"`rm -r {head}`"


def _make_fifo(head: Path) -> str:
    head.unlink()
    os.mkfifo(head, 0o640)
    return f"`rm {head}`"


@pytest.mark.parametrize("make", [_make_link, _make_dir, _make_fifo], ids=["symlink", "directory", "fifo"])
def test_a_head_json_that_is_no_regular_file_is_refused_as_the_inbox_guard_does_then_restaged(
    fleet: Fleet, make: Any
) -> None:
    node = _node(fleet, "node-h")
    assert fleet.publish(fleet.release(node, 1000))[0] == 0
    _follow(node)
    before, head = _generations(node), node.root / "channel-inbox" / "head.json"
    rm = make(head)
    refused = _persist_once(node, 90)["channel_import"]
    assert refused["status"] == "refused" and refused["error"] == "InboxPermissionError", refused
    assert str(head) in refused["problem"] and rm in refused["remedy"], refused
    assert "store files" not in refused["remedy"] and _generations(node) == before
    assert node.events("channel.import_refused")[-1]["fields"]["exit_code"] == 90

    subprocess.run(["rm", "-r", str(head)], check=True, timeout=60)  # the remedy
    assert node.cli_json("persist", "--once")[1]["channel_import"]["status"] == "none"  # no head: nothing staged
    assert _follow(node)["restaged"]  # the channel program hands the release off again
    assert _persist_once(node)["channel_import"]["generation"] == 1000


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_an_inbox_that_is_a_symbolic_link_is_refused_naming_the_configured_path(fleet: Fleet, relative: bool) -> None:
    from appliance.node.config import load_config

    node = _node(fleet, "node-l")
    inbox, real = node.root / "channel-inbox", node.root / "channel-inbox.real"
    if relative:  # as node.json is often written: relative to its directory (resolved, but not its last component)
        node.config_path.write_bytes(replace(node.config, channel_inbox="channel-inbox").to_bytes())
        node = LocalNode(node.root)
        assert load_config(node.config_path).channel_inbox == str(inbox)
    assert fleet.publish(fleet.release(node, 1000))[0] == 0
    _follow(node)
    inbox.rename(real)
    inbox.symlink_to(real.name)
    before = _generations(node)

    refused = _persist_once(node, 90)["channel_import"]
    assert refused["error"] == "InboxPermissionError" and refused["inbox"] == str(inbox), refused
    problem, remedy = refused["problem"], refused["remedy"]
    assert f"channel inbox {inbox} is a symbolic link" in problem and str(real) not in problem, problem
    assert "expected a directory owned by" in problem and "this process's user" in problem and "root" in problem
    assert f"rm {inbox} && install -d -m 2750" in remedy and "d " + str(inbox) + " 2750" in remedy, remedy
    assert _generations(node) == before

    inbox.unlink()  # the remedy: a real directory
    inbox.mkdir(mode=0o2750)
    inbox.chmod(0o2750)
    assert _follow(node)["restaged"]
    assert _persist_once(node)["channel_import"]["generation"] == 1000
