"""LocalStorage: paths never escape the root, links are refused, writes are exclusive and durable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.errors import LimitExceededError, StorageError, UnsafePathError
from appliance.storage import DurableBatch, LocalStorage, write_durable

pytestmark = pytest.mark.unit


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    (tmp_path / "d").mkdir()
    return LocalStorage(tmp_path)


def test_durable_write_then_read(storage: LocalStorage, tmp_path: Path) -> None:
    write_durable(storage, "d/f", b"hello")
    assert storage.read("d/f", 10) == b"hello"
    assert storage.size("d/f") == 5
    assert storage.listdir("d") == ["f"]
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".tmp-")]


def test_write_new_is_exclusive(storage: LocalStorage) -> None:
    storage.write_new("d/f", b"1")
    with pytest.raises(StorageError):
        storage.write_new("d/f", b"2")


def test_read_refuses_files_above_the_cap(storage: LocalStorage) -> None:
    storage.write_new("d/f", b"x" * 100)
    with pytest.raises(LimitExceededError):
        storage.read("d/f", 99)


def test_read_into_reports_the_real_size(storage: LocalStorage) -> None:
    storage.write_new("d/f", b"abcdef")
    buf = bytearray(4)
    assert storage.read_into("d/f", memoryview(buf)) == 6
    assert bytes(buf) == b"abcd"


def test_missing_entries(storage: LocalStorage) -> None:
    assert storage.size("d/nope") is None
    assert storage.listdir("nope") is None
    with pytest.raises(FileNotFoundError):
        storage.read("d/nope", 10)


@pytest.mark.parametrize("path", ["../x", "d/../x", "/etc/passwd", "d//x", "d/./x", "a\x00b"])
def test_invalid_paths_are_refused(storage: LocalStorage, path: str) -> None:
    with pytest.raises(ValueError):
        storage.read(path, 10)


def test_planted_symlinks_are_refused_not_followed(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    os.symlink(outside / "secret", tmp_path / "d" / "link")
    os.symlink(outside, tmp_path / "dirlink")
    with pytest.raises(UnsafePathError):
        storage.read("d/link", 10)
    with pytest.raises(UnsafePathError):
        storage.read("dirlink/secret", 10)
    with pytest.raises(UnsafePathError):
        storage.write_new("dirlink/new", b"x")
    assert not (outside / "new").exists()


def test_fifo_is_refused_without_blocking(storage: LocalStorage, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "d" / "fifo")
    with pytest.raises(UnsafePathError):
        storage.read("d/fifo", 10)


def test_rename_must_stay_in_one_directory(storage: LocalStorage) -> None:
    storage.mkdir("e")
    storage.write_new("d/f", b"1")
    with pytest.raises(ValueError):
        storage.rename("d/f", "e/f")


def test_batch_is_unusable_after_an_error(storage: LocalStorage) -> None:
    batch = DurableBatch(storage)
    batch.add("d/a", b"1")
    with pytest.raises(FileNotFoundError):
        batch.add("missing-dir/b", b"2")
    with pytest.raises(StorageError, match="abandoned"):
        batch.add("d/c", b"3")
    with pytest.raises(StorageError, match="abandoned"):
        batch.sync()
