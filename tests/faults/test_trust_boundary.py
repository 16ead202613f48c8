"""Attacks on the node's files from a local user or an offline storage attacker (issue 10: fail closed).

Each test plants what the attacker would (a world-readable key, a trust store on the writable
store partition, a squatted boot lock) on a real development node made by ``appliance
node-init`` and checks that the node refuses it, with the typed error naming the remedy.
Tests that need a second real user (``chown``, ``setuid``) need root and skip without it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appliance.cli.main import main
from appliance.errors import KeyPermissionError, TrustLocationError
from appliance.node.config import NodeConfig, load_config
from appliance.node.rundir import BOOT_LOCK, RunDir
from appliance.signing import SigningKey
from appliance.signing.keys import check_private_key_stat

pytestmark = pytest.mark.faults
ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to act as a second user (chown/setuid)")


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    assert main(["node-init", str(tmp_path / "n"), "--frame-size", "65536"]) == 0
    return tmp_path / "n"


def _set(node: Path, **changes: object) -> None:
    path = node / "node.json"
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


# --- private key files ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666, 0o660, 0o610])
def test_world_readable_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "k")
    (tmp_path / "k").chmod(mode)
    with pytest.raises(KeyPermissionError, match="group or others may read it") as info:
        SigningKey.load(tmp_path / "k")
    assert info.value.exit_code == 23 and "chmod 0400" in info.value.remedy


@pytest.mark.parametrize("mode", [0o400, 0o600])
def test_owner_only_key_file_is_accepted(tmp_path: Path, mode: int) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "k")
    (tmp_path / "k").chmod(mode)
    assert SigningKey.load(tmp_path / "k").keyid == key.keyid


def test_key_file_of_another_user_is_refused_by_the_rule(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "k")
    st = os.stat(tmp_path / "k")
    with pytest.raises(KeyPermissionError, match="owned by uid"):
        check_private_key_stat(tmp_path / "k", st, st.st_uid + 1)


@needs_root
def test_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "k")
    os.chown(tmp_path / "k", NOBODY, NOBODY)
    with pytest.raises(KeyPermissionError, match=f"owned by uid {NOBODY}"):
        SigningKey.load(tmp_path / "k")


def test_persist_refuses_a_device_key_others_can_read(node_dir: Path) -> None:
    (node_dir / "keys" / "device.key").chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli.main", "persist", "--once", "--config", str(node_dir / "node.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 23, done.stderr
    assert "KeyPermissionError" in done.stderr or "group or others may read it" in done.stderr


# --- the trust store's location ---------------------------------------------------------


@pytest.mark.parametrize("trust", ["", "store/trust.json", "store/A/trust.json", "store/B/planted.json"])
def test_trust_store_on_the_store_partition_is_refused_in_production(node_dir: Path, trust: str) -> None:
    _set(node_dir, require_mounts=True, trust=trust)
    with pytest.raises(TrustLocationError) as info:
        load_config(node_dir / "node.json")
    assert info.value.exit_code == 24 and "/etc/appliance/trust.json" in info.value.remedy
    code = main(["boot-status", "--config", str(node_dir / "node.json"), "--json"])
    assert code == 24


def test_trust_store_symlinked_into_the_store_is_refused_in_production(node_dir: Path) -> None:
    (node_dir / "etc").mkdir()
    (node_dir / "etc" / "trust.json").symlink_to(node_dir / "store" / "trust.json")
    _set(node_dir, require_mounts=True, trust="etc/trust.json")
    with pytest.raises(TrustLocationError, match="lies inside the store"):
        load_config(node_dir / "node.json")


def test_trust_store_outside_the_store_is_used_in_production(node_dir: Path) -> None:
    (node_dir / "etc").mkdir()
    (node_dir / "etc" / "trust.json").write_bytes((node_dir / "store" / "trust.json").read_bytes())
    _set(node_dir, require_mounts=True, trust="etc/trust.json")
    assert load_config(node_dir / "node.json").trust_file() == str(node_dir / "etc" / "trust.json")


def test_shipped_node_json_keeps_the_trust_store_on_the_rootfs() -> None:
    shipped = load_config(Path(__file__).resolve().parents[2] / "systemd" / "node.json")
    assert shipped.require_mounts and shipped.trust_file() == "/etc/appliance/trust.json"
    assert not shipped.trust_file().startswith(NodeConfig().store)


# --- modes of what node-init and the store write -----------------------------------------


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_store_files_are_not_world_readable(node_dir: Path) -> None:
    old = os.umask(0o022)  # the usual umask: the modes must not depend on it
    try:
        assert main(["seed", "--config", str(node_dir / "node.json"), "--json"]) == 0
    finally:
        os.umask(old)
    modes = _modes(node_dir / "store")
    assert any("/frames/" in p for p in modes) and any(p.endswith(".manifest.json") for p in modes)
    readable = {p: f"{m:04o}" for p, m in modes.items() if m & 0o007}
    assert not readable, f"others may read: {readable}"
    writable = {p: f"{m:04o}" for p, m in modes.items() if m & 0o022}
    assert not writable, f"group/others may write: {writable}"


def test_node_init_makes_private_dirs_and_files(node_dir: Path) -> None:
    mode = {p: stat.S_IMODE((node_dir / p).stat().st_mode) for p in (".", "keys", "run", "outbox", "log")}
    assert mode == {".": 0o750, "keys": 0o700, "run": 0o750, "outbox": 0o750, "log": 0o750}
    assert stat.S_IMODE((node_dir / "keys" / "device.key").stat().st_mode) == 0o400
    assert stat.S_IMODE((node_dir / "floor.json").stat().st_mode) == 0o640
    config = load_config(node_dir / "node.json")
    with RunDir(config.run_dir).boot_lock():
        lock = (Path(config.run_dir) / BOOT_LOCK).stat()
    assert stat.S_IMODE(lock.st_mode) == 0o600 and lock.st_uid == os.geteuid()


# --- the boot lock ------------------------------------------------------------------------


def _hold(path: Path, uid: int) -> subprocess.Popen[str]:
    """A process of user ``uid`` that opens ``path`` as that user may, flocks it exclusively and waits."""
    code = (
        "import fcntl,os,sys,time\n"
        f"os.setgid({uid}); os.setuid({uid})\n"
        "try:\n"
        f"    fd = os.open({str(path)!r}, os.O_RDONLY)\n"  # flock needs only a read-only fd
        "except FileNotFoundError:\n"
        f"    fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
        "except OSError as e:\n"
        "    print('DENIED', e.errno, flush=True); sys.exit(0)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('HELD', flush=True); time.sleep(60)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


@needs_root
def test_any_user_cannot_hold_the_boot_lock() -> None:
    """Another local user can neither open the boot lock nor squat it before boot creates it."""
    run = Path(tempfile.mkdtemp(prefix="appliance-run-"))
    run.chmod(0o1777)  # even in a run dir others may write (a mistake), the lock cannot be held
    try:
        _hold_attempts(run)
    finally:
        shutil.rmtree(run)


def _timeout(signum: int, frame: object) -> None:
    raise AssertionError("boot waited for a lock another user holds")


def _hold_attempts(run: Path) -> None:
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(30)
    try:
        _hold_steps(run)
    finally:
        signal.alarm(0)


def _hold_steps(run: Path) -> None:
    with RunDir(run).boot_lock():
        pass
    holder = _hold(run / BOOT_LOCK, NOBODY)
    try:
        assert holder.stdout is not None and holder.stdout.readline().split()[0] == "DENIED"
    finally:
        holder.kill()
        holder.wait()
    (run / BOOT_LOCK).unlink()  # a power cut empties /run: the squatter creates the lock first
    squatter = _hold(run / BOOT_LOCK, NOBODY)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "HELD"
        assert (run / BOOT_LOCK).stat().st_uid == NOBODY
        with RunDir(run).boot_lock():  # does not block: the squatted file is replaced
            lock = (run / BOOT_LOCK).stat()
            assert lock.st_uid == os.geteuid() and stat.S_IMODE(lock.st_mode) == 0o600
            fd = os.open(run / BOOT_LOCK, os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
    finally:
        squatter.kill()
        squatter.wait()


@needs_root
def test_provisioning_hands_the_device_key_to_its_signing_user(tmp_path: Path) -> None:
    """First boot (root) creates the key 0400 for the persist user and never needs to read it again."""
    from appliance.node.keyprovider import FileKeyProvider

    provider = FileKeyProvider(tmp_path, owner=(NOBODY, NOBODY))
    public = provider.create_signing_key("device")
    key = tmp_path / "device.key"
    st = key.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o400)
    assert provider.create_signing_key("device") == public == provider.public_key("device")
    with pytest.raises(KeyPermissionError, match=f"owned by uid {NOBODY}"):
        SigningKey.load(key)  # root may not sign with the persist user's key by accident
