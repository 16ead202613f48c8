"""Damage and bad input: detected, typed, the other slot restores, nothing committed is touched."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from appliance import api
from appliance.errors import (
    LockedError,
    NoValidCheckpointError,
    SlotUnavailableError,
    StorageFullError,
    UntrustedKeyError,
)
from appliance.signing import SigningKey
from appliance.storage import LocalStorage
from appliance.storage.base import translate_os_error
from appliance.store.lock import writer_lock
from appliance.store.store import Store
from tests.integration.conftest import flip_bit, frame_files, nudge, same, weights

pytestmark = pytest.mark.integration


def _root(store: Store) -> Path:
    return Path(str(getattr(store.storage, "root")))


def _two_generations(store: Store, key: SigningKey) -> tuple[dict, dict]:  # type: ignore[type-arg]
    v1 = weights()
    api.save(store, v1, key)  # gen 1 -> A
    v2 = nudge(v1, 0.01, seed=1)
    api.save(store, v2, key)  # gen 2 -> B
    return v1, v2


def test_bit_flip_in_newest_slot_falls_back_to_the_other(store: Store, key: SigningKey) -> None:
    """Guarantee: a corrupted frame is detected before use and the other slot restores bit-exactly."""
    v1, _ = _two_generations(store, key)
    only_in_b = set(p.name for p in frame_files(store, "B")) - set(p.name for p in frame_files(store, "A"))
    victim = next(p for p in frame_files(store, "B") if p.name in only_in_b)
    flip_bit(victim)
    loaded = api.load(store)
    assert (loaded.slot, loaded.generation) == ("A", 1)
    assert same(loaded.tensors, v1)
    assert [(f.slot, f.generation, type(f.error).__name__) for f in loaded.failures] == [("B", 2, "FrameError")]
    report = store.verify()
    assert [(c.slot, c.generation, c.ok) for c in report.checkpoints] == [("B", 2, False), ("A", 1, True)]


@pytest.mark.parametrize("damage", ["garbage", "truncate", "delete", "swap"])
def test_damaged_commit_record_or_manifest_means_not_committed(store: Store, key: SigningKey, damage: str) -> None:
    """Guarantee: a record or bundle that does not check out is never used; the older checkpoint is."""
    v1, _ = _two_generations(store, key)
    ckpt = _root(store) / "B" / "checkpoints"
    record, bundle = ckpt / f"{2:020d}.commit.json", ckpt / f"{2:020d}.manifest.json"
    if damage == "garbage":
        record.write_bytes(record.read_bytes()[:-20] + b"\x00" * 40)
    elif damage == "truncate":
        bundle.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    elif damage == "delete":
        bundle.unlink()
    else:  # mix-and-match: another generation's valid bundle under this record
        shutil.copy(_root(store) / "A" / "checkpoints" / f"{1:020d}.manifest.json", bundle)
    loaded = api.load(store)
    assert (loaded.slot, loaded.generation) == ("A", 1)
    assert same(loaded.tensors, v1)


def test_missing_frame_is_found_before_restoring(store: Store, key: SigningKey) -> None:
    _two_generations(store, key)
    for p in frame_files(store, "B"):
        p.unlink()
    selection = store.select()
    assert (selection.opened.slot, selection.opened.generation) == ("A", 1)
    assert "FrameMissingError" in selection.failures[0].describe()


def test_nothing_valid_is_a_typed_no_valid_checkpoint(store: Store, key: SigningKey) -> None:
    """Guarantee: when every slot is damaged the answer is NoValidCheckpointError, never a partial model."""
    _two_generations(store, key)
    for slot in ("A", "B"):
        for p in frame_files(store, slot):
            flip_bit(p, 0)
    with pytest.raises(NoValidCheckpointError) as err:
        api.load(store)
    assert err.value.exit_code == 50


def test_empty_store_has_no_valid_checkpoint(store: Store) -> None:
    with pytest.raises(NoValidCheckpointError, match="empty"):
        api.load(store)


def test_next_commit_succeeds_after_damage_and_is_valid(store: Store, key: SigningKey) -> None:
    """Guarantee: damage in either slot never makes the next commit fail or produce a bad checkpoint."""
    v1, v2 = _two_generations(store, key)
    for p in frame_files(store, "B")[:3] + frame_files(store, "A")[:2]:
        flip_bit(p)
    v3 = nudge(v2, 0.01, seed=3)
    result = api.save(store, v3, key)
    assert result.generation == 3
    loaded = api.load(store, deep=True)
    assert loaded.generation == 3 and same(loaded.tensors, v3)


def test_commit_with_untrusted_key_writes_nothing(store: Store, key: SigningKey) -> None:
    def listing() -> list[Path]:
        return sorted(p.relative_to(_root(store)) for p in _root(store).rglob("*") if p.name != "lock")

    before = listing()
    with pytest.raises(UntrustedKeyError):
        api.save(store, weights(), SigningKey.generate())
    assert listing() == before


class FullDisk(LocalStorage):
    """LocalStorage whose N-th data write fails with ENOSPC."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.writes = 0
        self.fail_at = fail_at

    def write_new(self, path: str, data: bytes | memoryview) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise translate_os_error(OSError(errno.ENOSPC, "No space left on device"), "write", path)
        super().write_new(path, data)


@pytest.mark.parametrize("fail_at", [1, 5, 40, 10**6])
def test_full_disk_leaves_the_store_as_it_was(store: Store, key: SigningKey, fail_at: int) -> None:
    """Guarantee: a write that hits a full disk is never acknowledged and leaves no trace of itself."""
    v1, v2 = _two_generations(store, key)
    root = _root(store)
    snapshot = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "lock"}
    failing = FullDisk(root, fail_at)
    store.storage = failing
    v3 = nudge(v2, 0.2, seed=9)
    if fail_at == 10**6:  # control: the same commit succeeds when the disk has room
        api.save(store, v3, key)
        return
    with pytest.raises(StorageFullError):
        api.save(store, v3, key)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == snapshot
    store.storage = LocalStorage(root)
    assert same(api.load(store).tensors, v2)
    assert api.save(store, v3, key).generation == 3


def test_missing_target_slot_refuses_the_commit_and_keeps_restoring(store: Store, key: SigningKey) -> None:
    v1 = weights()
    api.save(store, v1, key)  # A
    shutil.rmtree(_root(store) / "B")  # the B partition is not mounted
    with pytest.raises(SlotUnavailableError, match="slot B"):
        api.save(store, nudge(v1, 0.01, seed=1), key)
    assert same(api.load(store).tensors, v1)


def test_checkpoint_for_another_model_is_never_used(store: Store, key: SigningKey) -> None:
    api.save(store, weights(), key)
    cfg = _root(store) / "store.json"
    config = json.loads(cfg.read_text())
    config["model"] = "another-model"
    cfg.write_text(json.dumps(config))
    with pytest.raises(NoValidCheckpointError, match="CompatibilityError"):
        api.load(Store.open(_root(store)))


def test_second_writer_is_refused_while_the_lock_is_held(store: Store, key: SigningKey) -> None:
    with writer_lock(store.lock_path), pytest.raises(LockedError):
        api.save(store, weights(), key)
