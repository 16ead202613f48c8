"""RecordingStorage behaves like LocalStorage, logs what a crash can split, and replays consistently."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import LimitExceededError, StorageError, StorageFullError, UnsafePathError
from appliance.storage import LocalStorage, Storage, write_durable
from appliance.storage.recording import Fsync, FsyncDir, Image, Link, RecordingStorage, Rename, Write

from .crashstates import CrashState, build, optional_ops

pytestmark = [pytest.mark.unit, pytest.mark.faults]


def _both(tmp_path: Path) -> list[Storage]:
    return [RecordingStorage(), LocalStorage(tmp_path)]


def test_recording_storage_matches_local_storage_semantics(tmp_path: Path) -> None:
    """Same answers and same error classes as LocalStorage for every call the store makes."""
    for storage in _both(tmp_path):
        storage.mkdir("A")
        storage.write_new("A/f", b"hello")
        assert storage.read("A/f", 10) == b"hello" and storage.size("A/f") == 5
        out = memoryview(bytearray(3))
        assert storage.read_into("A/f", out) == 5 and bytes(out) == b"hel"
        assert storage.listdir("A") == ["f"] and storage.listdir("B") is None and storage.size("A/g") is None
        with pytest.raises(StorageError):
            storage.write_new("A/f", b"again")  # exclusive create
        with pytest.raises(LimitExceededError):
            storage.read("A/f", 4)
        with pytest.raises(FileNotFoundError):
            storage.read("A/missing", 10)
        with pytest.raises(UnsafePathError):
            storage.read("A", 10)  # a directory is not a regular file
        storage.write_new("A/g", b"new")
        storage.rename("A/g", "A/f")  # replaces atomically
        assert storage.read("A/f", 10) == b"new" and storage.listdir("A") == ["f"]
        storage.unlink("A/f")
        with pytest.raises(FileNotFoundError):
            storage.unlink("A/f")


def test_durable_write_logs_data_name_and_barriers_in_order() -> None:
    """write_durable = Link, Write, Fsync(file), Rename, FsyncDir(parent) — the crash model's unit."""
    storage = RecordingStorage()
    storage.mkdir("d")
    storage.ops.clear()
    write_durable(storage, "d/x", b"data")
    kinds = [type(op) for op in storage.ops]
    assert kinds == [Link, Write, Fsync, Rename, FsyncDir]
    assert optional_ops(storage.ops, len(storage.ops)) == []  # all covered once the directory is synced
    assert optional_ops(storage.ops, 4) == [0, 3]  # before the directory fsync: both names may be lost


def test_capacity_raises_storage_full() -> None:
    """A capacity turns into StorageFullError, like ENOSPC from LocalStorage."""
    storage = RecordingStorage(capacity=10)
    storage.write_new("a", b"12345678")
    with pytest.raises(StorageFullError):
        storage.write_new("b", b"12345")


def test_an_inode_whose_link_was_lost_is_never_reused() -> None:
    """Lost Link + kept Write + kept Rename: a write after the crash must not overwrite that file."""
    storage = RecordingStorage()
    write_durable(storage, "x", b"committed")
    ops = list(storage.ops)
    image = build(Image(), ops, CrashState("ordering", len(ops), frozenset({0})))
    after = RecordingStorage(image)
    after.write_new("y", b"later")
    assert after.read("x", 100) == b"committed" and after.read("y", 100) == b"later"
