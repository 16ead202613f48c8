"""Persist path changes of issue 6: overlapped frame writes keep W4, auto policy is recorded, fast hashes once."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import StorageIOError
from appliance.format.restore_time import DeviceRates
from appliance.signing import SigningKey
from appliance.storage import LocalStorage
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.store import Store

pytestmark = pytest.mark.unit


class FailingStorage(LocalStorage):
    """Fails the ``n``-th frame write, from whichever writer thread gets there."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at, self.count, self.lock = fail_at, 0, threading.Lock()

    def write_new(self, path: str, data: bytes | memoryview) -> None:
        if "/frames/" in path:
            with self.lock:
                self.count += 1
                hit = self.count == self.fail_at
            if hit:
                raise StorageIOError(f"injected I/O error writing {path}")
        super().write_new(path, data)


def _sources(seed: int, tensors: int = 6) -> list[TensorSource]:
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 2**16, 20_000, dtype=np.uint16) for _ in range(tensors)]
    return [TensorSource(f"t{i}", "uint16", a.shape, lambda a=a: a.view(np.uint8)) for i, a in enumerate(arrays)]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fail_at", [1, 3, 7])
def test_failed_overlapped_write_leaves_no_file_behind_and_keeps_the_previous_commit(
    tmp_path: Path, fail_at: int
) -> None:
    """W4 with two writer threads: nothing this commit created survives, committed data untouched."""
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=8192, policy="fast"))
    store.commit(_sources(0), [key])
    before = _files(tmp_path / "s")
    store.storage = FailingStorage(tmp_path / "s", fail_at)
    with pytest.raises(StorageIOError):
        store.commit(_sources(1), [key])
    assert _files(tmp_path / "s") == before
    assert store.select().opened.generation == 1


def test_auto_policy_is_resolved_from_the_device_profile_and_recorded(tmp_path: Path) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", policy="auto"))
    store.commit(_sources(2), [key])  # no profile yet: auto means compact
    assert store.select().opened.verified.manifest.policy == "compact"
    fast_storage = DeviceRates(
        cores=2, hash=1.5e9, read_copy=2e9, read_cold=8e9, touch=2e9, decode={"bg2+zstd-lit": 1.5e9}
    )
    store.save_device_profile(fast_storage)
    assert json.loads((tmp_path / "s" / layout.DEVICE_PROFILE).read_text())["read_cold"] == 8e9
    store.commit(_sources(3), [key])
    assert store.select().opened.verified.manifest.policy == "fast"


def test_fast_frames_are_stored_with_one_digest_for_raw_and_stored_bytes(tmp_path: Path) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=8192, policy="fast"))
    store.commit(_sources(4), [key])
    opened = store.select().opened
    frames = list(opened.verified.manifest.frame_index().values())
    assert frames and all(f.digest == f.raw_digest and f.codec.name == "id" for f in frames)
    for f in frames:  # and the file really holds bytes with that digest
        path = tmp_path / "s" / layout.frame_path(opened.slot, f.digest)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f.digest.hex
