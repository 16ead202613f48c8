"""The fleet channel's network side as its own user (issue 10's last trust-boundary item, issue 13).

A node made like production (``node-init --users``: the shipped sysusers and tmpfiles rules, real
supervisord starting each program as its user) runs the ``channel`` program as
``appliance-channel`` against a real S3 server. That user parses what comes from the bucket; the
test proves it cannot write the store, the trust store or the floor, cannot read the device key or
reach supervisord, and that a published release still reaches the node: the channel program only
stages it in its inbox, the persistence watchdog (``appliance-persist``) imports it, boot serves it.
Needs root; skips (saying why) without it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.remote.supervisord import ChannelProgram, channel_section
from appliance.store.store import Store
from tests.integration.s3server import S3Server, remote_json
from tests.integration.test_channel import Fleet
from tests.integration.test_privileges import _as, _interpreter, _try, _uid_of, users

pytestmark = [pytest.mark.integration, pytest.mark.root]
CHANNEL, PERSIST = "appliance-channel", "appliance-persist"
__all__ = ["users"]  # the fixture: the shipped users (systemd-sysusers) and an intruder


def _chown(path: Path, user: str, mode: int) -> None:
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(mode)


@pytest.fixture
def channel_node(users: dict[str, pwd.struct_passwd], server: S3Server) -> Iterator[tuple[LocalNode, Fleet]]:
    python, env = _interpreter()
    probe = _as(CHANNEL, [python, "-c", "import appliance.cli.main, boto3, zstandard"], env)
    if probe.returncode != 0:
        pytest.skip(f"{CHANNEL} cannot import appliance and boto3 with {python}: {probe.stderr[-300:]}")
    base = Path(tempfile.mkdtemp(prefix="appliance-chan-"))
    base.chmod(0o711)
    node: LocalNode | None = None
    try:
        node = LocalNode.create(base / "n", env=env, users=True, frame_size=65536, persist_interval=3600,
                                python=python)  # fmt: skip
        cli = [python, "-m", "appliance.cli.main"]
        seeded = _as(PERSIST, [*cli, "seed", "--config", str(node.config_path), "--json"], env, timeout=300)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        fleet = Fleet(base, server)
        release_pub = node.root / "release.pub"
        shutil.copyfile(base / "release.key.pub", release_pub)
        release_pub.chmod(0o644)
        model = Store.open(node.root / "store").config.model
        added = _as(PERSIST, [*cli, "trust", str(node.root / "store"), "add", str(release_pub), "--role", "release",
                              "--model", model, "--json"], env)  # fmt: skip
        assert added.returncode == 0, added.stdout + added.stderr
        state = node.root / "channel-state"
        state.mkdir()
        _chown(state, CHANNEL, 0o700)
        remote = remote_json(node.root / "remote.json", server, "node-a", channel="stable", state_dir=str(state),
                             restore_at_boot=False, poll_interval=0.5)  # fmt: skip
        remote.chmod(0o644)
        _chown(node.root / "s3-credentials.json", CHANNEL, 0o600)  # only the network side holds them
        program = ChannelProgram(appliance=" ".join(cli), config=str(node.config_path), remote=str(remote),
                                 log_dir=str(node.root / "log"), state_dir=str(state), user=CHANNEL)  # fmt: skip
        conf = node.root / "supervisord.conf"
        conf.write_text(conf.read_text() + "\n" + channel_section(program))
        subprocess.run(["systemd-tmpfiles", "--create", str(node.root / "tmpfiles.conf")], check=True, timeout=60)
        node.start()
        done = _as("appliance-boot", [*cli, "boot", "--config", str(node.config_path), "--json"], env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        yield node, fleet
    finally:
        if node is not None:
            node.stop()  # never leave supervisord running, whatever failed above
        shutil.rmtree(base, ignore_errors=True)


def test_channel_network_side_cannot_write_the_store_or_read_the_device_key(
    channel_node: tuple[LocalNode, Fleet], users: dict[str, pwd.struct_passwd]
) -> None:
    node, fleet = channel_node
    program = node.control().info("channel")
    assert program.state == "RUNNING" and _uid_of(program.pid) == users[CHANNEL].pw_uid
    store, key = Path(node.config.store), node.config.signing_key
    # what a compromised network side cannot do
    assert _try(CHANNEL, f"open({key!r}, 'rb').read()") == "EACCES"
    for target in (store / "A" / "frames" / "planted", store / "B" / "checkpoints" / "planted",
                   store / "A" / "state.json.new", store / "trust.json.new"):  # fmt: skip
        assert _try(CHANNEL, f"open({str(target)!r}, 'xb')") == "EACCES", target
    assert _try(CHANNEL, f"open({str(store / 'trust.json')!r}, 'ab')") == "EACCES"
    assert _try(CHANNEL, f"open({node.config.floor_file!r}, 'rb')") == "EACCES"
    sock = node.config.supervisor_socket
    assert _try(CHANNEL, f"s=socket.socket(socket.AF_UNIX); s.connect({sock!r})") in ("EACCES", "EPERM")
    # what it may do: read the store (to download only what the node lacks), write its inbox
    frame = next((store / "A" / "frames").iterdir())
    assert _try(CHANNEL, f"open({str(frame)!r}, 'rb').read(1)") == "OK"
    inbox = Path(node.config.channel_inbox)
    st = inbox.stat()
    assert (pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)) == (CHANNEL, 0o2750)
    assert _try(PERSIST, f"open({str(inbox / 'planted')!r}, 'xb')") == "EACCES"  # persist only reads it

    # a release still reaches the node: staged by the channel's user, imported by the store's writer
    assert fleet.publish(fleet.release(node, 1000))[0] == 0
    restored = node.wait_event("remote.restored", timeout=180)
    assert restored["fields"]["generation"] == 1000 and restored["fields"]["imported"] is True
    assert restored["component"] == "persist" and _uid_of(restored["pid"]) == users[PERSIST].pw_uid
    staged = node.events("channel.staged")
    assert len(staged) == 1 and staged[0]["pid"] == program.pid
    for path in Path(node.config.store).rglob("*"):  # nothing in the store is the channel user's; no world bits
        assert path.owner() != CHANNEL and not stat.S_IMODE(path.lstat().st_mode) & 0o007, path
    python, env = _interpreter()
    cli = [python, "-m", "appliance.cli.main"]
    done = _as("appliance-boot", [*cli, "boot", "--config", str(node.config_path), "--json"], env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["serving"]["generation"] == 1000, done.stdout
