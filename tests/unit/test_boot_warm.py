"""Issue 16 goal 1: boot warms the page cache with the candidate it hands to the service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.signing import SigningKey
from appliance.storage import LocalStorage
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.store import Store
from appliance.store.warm import available_memory, start_warming, warm_list

pytestmark = pytest.mark.unit


class RecordingPrefetch(LocalStorage):
    """Records prefetch hints (a fault-injection seam; the real local storage otherwise)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hints: list[str] = []

    def prefetch(self, path: str) -> None:
        self.hints.append(path)
        super().prefetch(path)


def _store(tmp_path: Path) -> Store:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=4096, policy="fast"))
    rng = np.random.default_rng(0)
    arrays = {"big": rng.integers(0, 255, 20_000, dtype=np.uint8), "small": rng.integers(0, 255, 100, dtype=np.uint8)}
    store.commit([TensorSource(n, "uint8", a.shape, lambda a=a: a) for n, a in arrays.items()], [key])
    return store


def test_boot_warms_every_frame_largest_first_within_the_budget(tmp_path: Path) -> None:
    store = _store(tmp_path)
    opened = store.select().opened
    frames = opened.verified.manifest.frame_index().values()
    every = warm_list(opened, 1 << 30)
    assert sorted(every) == sorted(layout.frame_path(opened.slot, f.digest) for f in frames)
    assert every[-1].endswith(min(frames, key=lambda f: f.raw_size).digest.hex)  # the 100-byte frame last
    assert len(warm_list(opened, 8192)) == 2 and warm_list(opened, 0) == []
    storage = RecordingPrefetch(tmp_path / "s")
    thread = start_warming(storage, opened, budget=1 << 30)
    assert thread is not None
    thread.join(10)
    assert storage.hints == every


def test_memavailable_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   12000000 kB\n")
    assert available_memory(meminfo) == 12_000_000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")
    assert available_memory(meminfo) is None


def test_a_stopped_warm_up_reads_nothing_more_and_its_thread_is_gone(tmp_path: Path) -> None:
    """Boot stops the warm-up after the trial: no read-ahead of ours outlives it (CI: an ext4 slot's
    umount was "target is busy" while the thread still held a frame file open)."""
    import threading

    store = _store(tmp_path)
    opened = store.select().opened
    gate = threading.Event()

    class Slow(RecordingPrefetch):
        def prefetch(self, path: str) -> None:
            gate.wait(5)
            super().prefetch(path)

    storage = Slow(tmp_path / "s")
    warming = start_warming(storage, opened, budget=1 << 30)
    assert warming is not None
    threading.Timer(0.2, gate.set).start()
    warming.stop()
    assert not [t for t in threading.enumerate() if t.name == "warm"]
    assert len(storage.hints) <= 1 < len(warm_list(opened, 1 << 30))  # at most the file it was on
