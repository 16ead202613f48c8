"""Node edge: node.json, run-directory files and locks, the file floor, mounts, sd_notify, entry points."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from appliance.errors import ConfigError, StorageError
from appliance.format.handoff import Handoff
from appliance.node.config import NodeConfig, load_config
from appliance.node.entrypoint import load_entry_point
from appliance.node.floor import FileFloor, FloorCorruptError, FloorNotAFileError, FloorUnreadableError, open_floor
from appliance.node.mounts import unavailable_slots
from appliance.node.notify import sd_notify, watchdog_interval
from appliance.node.rundir import RunDir

pytestmark = pytest.mark.unit


def test_node_json_resolves_relative_paths_against_its_directory(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps({"format": "appliance.node", "version": 1, "store": "s", "port": 9}))
    config = load_config(tmp_path / "node.json")
    assert config.store == str(tmp_path / "s") and config.port == 9 and config.run_dir == "/run/appliance"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"format": "appliance.node", "version": 1, "port": "80"}',
        '{"format": "appliance.node", "version": 1, "unknown": 1}',
        '{"format": "appliance.node", "version": 1, "model": "no-colon"}',
        '{"format": "appliance.node", "version": 2}',
    ],
)
def test_bad_node_json_is_a_config_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "node.json").write_text(content)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "node.json")


def _node_json(tmp_path: Path, **fields: object) -> Path:
    (tmp_path / "node.json").write_text(json.dumps({"format": "appliance.node", "version": 1, **fields}))
    return tmp_path / "node.json"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("file:/etc/appliance/store.kek", "file:/etc/appliance/store.kek"),
        ("systemd-creds:/etc/appliance/store.cred", "systemd-creds:/etc/appliance/store.cred"),
        ("entry-point:vendor.optee_kek:factory", "entry-point:vendor.optee_kek:factory"),
        ("file:keys/store.kek", "file:{tmp}/keys/store.kek"),  # relative: against node.json's directory
        ("", ""),  # a plain store, as before the option existed
    ],
)
def test_encrypt_kek_is_a_kek_spec_resolved_at_load(tmp_path: Path, spec: str, expected: str) -> None:
    config = load_config(_node_json(tmp_path, store="/var/lib/appliance", encrypt_kek=spec))
    assert config.encrypt_kek == expected.format(tmp=tmp_path)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("/etc/appliance/store.kek", "names no KEK provider"),  # a bare path: the provider must be named
        ("rot13:/etc/k", "names no KEK provider"),
        ("file:", "names no KEK location"),
        ("entry-point:vendor.optee_kek", "is no entry point"),
        ("entry-point:vendor-x:make kek", "is no entry point"),
        ("file:/var/lib/appliance/A/store.kek", "lies inside the store"),
        ("systemd-creds:/var/lib/appliance", "lies inside the store"),
    ],
)
def test_a_bad_encrypt_kek_is_a_config_error_with_a_remedy(tmp_path: Path, spec: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        load_config(_node_json(tmp_path, store="/var/lib/appliance", encrypt_kek=spec))
    assert "encrypt_kek" in info.value.problem and info.value.remedy


def test_missing_node_json_names_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.json")


def test_run_files_round_trip_and_damage_reads_as_absent(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    h = Handoff("abc", "A", 3, "f" * 64)
    run.write_handoff(h)
    assert run.read_handoff() == h
    (tmp_path / "run" / "handoff.json").write_text("{garbage")
    assert run.read_handoff() is None
    run.write_recovery({"reason": "x"})
    assert run.read_recovery() == {"reason": "x"}
    run.clear_recovery()
    run.clear_recovery()  # idempotent
    assert run.read_recovery() is None and run.read_report() is None


def test_boot_lock_excludes_commits_and_is_released_with_its_holder(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert not run.boot_running()
    with run.boot_lock():
        assert run.boot_running()
        with run.commit_guard() as free:
            assert not free
    with run.commit_guard() as free:
        assert free
        released = threading.Event()

        def boot() -> None:
            with run.boot_lock():
                released.set()

        t = threading.Thread(target=boot)
        t.start()
        assert not released.wait(0.2)  # a boot waits for the in-flight commit
    t.join(5)
    assert released.is_set()


def test_file_floor_only_rises(tmp_path: Path) -> None:
    floor = FileFloor(tmp_path / "f" / "floor.json")
    assert floor.raise_to(0) == 0 and floor.read() == 0
    assert floor.raise_to(5) == 5 and floor.raise_to(3) == 5 and floor.read() == 5


def test_damaged_floor_file_is_reported_and_rewritten_by_a_raise(tmp_path: Path) -> None:
    path = tmp_path / "floor.json"
    path.write_text('{"floor": "high"}')
    floor = FileFloor(path)
    with pytest.raises(FloorUnreadableError):
        floor.read()
    assert floor.raise_to(4) == 4 and floor.read() == 4


def test_a_symlinked_floor_is_never_followed_and_a_raise_replaces_the_link(tmp_path: Path) -> None:
    """Trial 4: a floor.json link to a file holding a lower floor was read through (config paths were
    resolved, following links): the link is damage, and boot's rebuild replaces the link itself."""
    real = tmp_path / "elsewhere.json"
    FileFloor(real).raise_to(0)
    link = tmp_path / "floor.json"
    link.symlink_to(real)
    config = NodeConfig.from_dict({"format": "appliance.node", "version": 1, "floor_file": "floor.json"}, base=tmp_path)
    assert config.floor_file == str(link)  # the configured path, not the link's target
    with pytest.raises(FloorCorruptError, match="symbolic link"):
        FileFloor(config.floor_file).read()
    assert FileFloor(config.floor_file).raise_to(3) == 3
    assert not link.is_symlink() and FileFloor(link).read() == 3 and FileFloor(real).read() == 0


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_floor_path_that_is_not_a_file_is_refused_and_never_replaced(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "floor.json"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    with pytest.raises(FloorNotAFileError, match="not a file"):
        FileFloor(path).read()
    with pytest.raises(StorageError, match="cannot be recorded") as caught:
        FileFloor(path).raise_to(2)
    assert f"remove {path}" in caught.value.remedy and (path.is_dir() if kind == "directory" else path.is_fifo())


def test_floor_provider_entry_point(tmp_path: Path) -> None:
    config = NodeConfig(floor_file=str(tmp_path / "x.json"))
    assert isinstance(open_floor(config), FileFloor)
    custom = NodeConfig(floor_provider="tests.unit.test_node:_memory_floor")
    assert open_floor(custom).read() == 42  # type: ignore[attr-defined]


class _MemoryFloor:
    def read(self) -> int:
        return 42

    def raise_to(self, value: int) -> int:
        return max(value, 42)


def _memory_floor(config: NodeConfig) -> _MemoryFloor:
    return _MemoryFloor()


def test_entry_point_errors_are_config_errors() -> None:
    assert load_entry_point("json:dumps", "x") is json.dumps
    for spec in ("json", "no_such_module_x:f", "json:no_such_attr", "json:__doc__", "../evil:f"):
        with pytest.raises(ConfigError):
            load_entry_point(spec, "x")


def test_unavailable_slots_missing_and_unmounted(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    assert unavailable_slots(tmp_path, require_mounts=False) == {"B": f"{tmp_path / 'B'} is missing"}
    (tmp_path / "B").mkdir()
    assert unavailable_slots(tmp_path, False) == {}
    gaps = unavailable_slots(tmp_path, True, ismount=lambda p: p.endswith("A"))
    assert list(gaps) == ["B"] and "not a mount point" in gaps["B"]


def test_sd_notify_sends_to_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sd_notify("READY=1") is False  # not under systemd
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        assert sd_notify("WATCHDOG=1", "STATUS=ok") is True
        assert server.recv(100) == b"WATCHDOG=1\nSTATUS=ok"
        assert watchdog_interval() == 15.0
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert watchdog_interval() is None
