"""Issue 16 goal 2: a committer that remembers its last commit writes the same checkpoint, faster.

The persistence watchdog keeps the raw state of the checkpoint it committed (``LastCommit``);
its next commit into the same slot neither re-reads nor re-verifies nor decodes its parent. The
guarantee is equality: with and without the memory the new manifest names the same frames with
the same stored bytes, and every checkpoint restores byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import api
from appliance.crypto import FileKek
from appliance.errors import ExportFileError, UsageError
from appliance.format.manifest import Manifest
from appliance.signing import SigningKey
from appliance.sources.export import open_export, write_export
from appliance.storage import LocalStorage
from appliance.store.commit import CommitResult
from appliance.store.config import StoreConfig
from appliance.store.discovery import open_checkpoint, scan
from appliance.store.encode import TensorSource
from appliance.store.lastcommit import LastCommit, same_bytes
from appliance.store.store import Store

pytestmark = pytest.mark.integration  # torch and real stores: tests/unit stays torch-free (Python 3.10 smoke)

FRAME = 8192


class CountingStorage(LocalStorage):
    """Counts reads of frame files (a fault-injection seam: the real local storage otherwise)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.frame_reads: list[str] = []

    def read(self, path: str, max_size: int) -> bytes:
        if "/frames/" in path:
            self.frame_reads.append(path)
        return super().read(path, max_size)

    def read_into(self, path: str, out: memoryview) -> int:
        if "/frames/" in path:
            self.frame_reads.append(path)
        return super().read_into(path, out)


def _sources(arrays: dict[str, np.ndarray]) -> list[TensorSource]:
    # private copies, as state exports read with pread are: the memory keeps references to them
    return [
        TensorSource(n, str(a.dtype), a.shape, lambda a=a: a.copy().view(np.uint8).reshape(-1))
        for n, a in sorted(arrays.items())
    ]


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.integers(0, 2**16, 40_000, dtype=np.uint16),  # ten frames
        "b": rng.integers(0, 2**16, 3_000, dtype=np.uint16),  # one short frame
        "z": np.zeros(9_000, dtype=np.uint16),  # frames of equal raw bytes
    }


def _step(state: dict[str, np.ndarray], seed: int, fraction: float, tensors: tuple[str, ...] = ("w",)) -> None:
    rng = np.random.default_rng(1000 + seed)
    for name in tensors:
        a = state[name]
        idx = rng.integers(0, a.size, max(1, int(a.size * fraction)))
        a[idx] ^= rng.integers(1, 4, idx.size, dtype=np.uint16)


def _store(root: Path, policy: str = "compact", depth: int = 8) -> tuple[Store, SigningKey]:
    key = SigningKey.generate()
    store = Store.init(
        root, [key.public], StoreConfig(model="m", frame_size=FRAME, policy=policy, max_delta_depth=depth)
    )
    store.good_provider = lambda: {"A": 1, "B": None}  # the watchdog's case: commits go to B, A serves
    return store, key


def _frames(store: Store, generation: int) -> list[tuple[str, int, str, str]]:
    manifest = _manifest(store, generation)
    return [(t.name, i, f.digest.hex, str(f.codec)) for t in manifest.tensors for i, f in enumerate(t.frames)]


def _manifest(store: Store, generation: int) -> Manifest:
    for outcome in scan(store.storage).records:
        if outcome.generation == generation and outcome.record is not None:
            return open_checkpoint(store.storage, outcome.record, store.trust, "m").verified.manifest
    raise AssertionError(f"generation {generation} not found")


class Series:
    """Commits of a state that moves step by step; each manifest's frames recorded as it commits."""

    def __init__(self, root: Path, remember: bool, policy: str, depth: int = 8) -> None:
        self.store, self.key = _store(root, policy, depth)
        self.last = LastCommit() if remember else None
        self.state = _state(0)
        self.results: list[CommitResult] = []
        self.frames: list[list[tuple[str, int, str, str]]] = []

    def commit(self) -> None:
        result, _ = self.store.commit(_sources(self.state), [self.key], last=self.last)
        self.results.append(result)
        self.frames.append(_frames(self.store, result.generation))

    def run(self, steps: list[tuple[float, tuple[str, ...]]]) -> Series:
        self.commit()
        for i, (fraction, tensors) in enumerate(steps):
            _step(self.state, i, fraction, tensors)
            self.commit()
        return self


STEPS = [(0.01, ("w",)), (0.0, ()), (0.01, ("w", "b")), (0.3, ("w",)), (0.01, ("z",))]


@pytest.mark.parametrize("policy", ["compact", "fast"])
def test_remembering_the_parent_writes_the_same_frames(tmp_path: Path, policy: str) -> None:
    """Same frame digests and codecs, generation by generation, with and without the memory."""
    plain = Series(tmp_path / "plain", False, policy).run(STEPS)
    kept = Series(tmp_path / "kept", True, policy).run(STEPS)
    assert [r.slot for r in kept.results] == ["B"] * (len(STEPS) + 1)
    assert kept.frames == plain.frames
    assert kept.store.verify().all_ok
    loaded = api.load(kept.store)
    for name, array in kept.state.items():
        assert loaded.tensors[name].numpy().view(np.uint8).tobytes() == array.view(np.uint8).tobytes()
    last = kept.last
    assert last is not None and last.slot == "B" and last.raw_bytes == sum(a.nbytes for a in kept.state.values())


def test_the_remembered_parent_is_not_read_again(tmp_path: Path) -> None:
    """The second commit into B reads no frame file at all: unchanged frames are found by comparing bytes."""
    store, key = _store(tmp_path / "s")
    last = LastCommit()
    state = _state(0)
    store.commit(_sources(state), [key], last=last)  # B (A is the GOOD slot)
    _step(state, 0, 0.01)
    store.commit(_sources(state), [key], last=last)  # B again, its parent remembered
    _step(state, 1, 0.01)
    counting = CountingStorage(store.storage.root)
    store.storage = counting
    result, _ = store.commit(_sources(state), [key], last=last)
    reads = counting.frame_reads
    assert result.slot == "B" and result.counts["delta"] == 10 and result.counts["reused"] == 4
    assert reads == []
    assert store.verify().all_ok


def test_memory_of_another_checkpoint_is_not_used(tmp_path: Path) -> None:
    """A commit by someone else in between (other parent digest) makes the memory unusable, not wrong."""
    store, key = _store(tmp_path / "s")
    last = LastCommit()
    state = _state(0)
    store.commit(_sources(state), [key], last=last)
    _step(state, 0, 0.01)
    store.commit(_sources(state), [key], last=last)  # B, remembered
    other = {k: v.copy() for k, v in state.items()}
    _step(other, 9, 0.2)
    store.commit(_sources(other), [key])  # another committer: B's newest is now not what `last` holds
    assert last.for_parent("B", store.select().opened.verified.manifest.digest(), "B") is None
    _step(state, 1, 0.01)
    store.commit(_sources(state), [key], last=last)
    assert store.verify().all_ok
    loaded = api.load(store)
    assert loaded.tensors["w"].numpy().tobytes() == state["w"].tobytes()


def test_a_failed_commit_forgets_and_a_limit_keeps_nothing(tmp_path: Path) -> None:
    store, key = _store(tmp_path / "s")
    small = LastCommit(limit=1000)
    store.commit(_sources(_state(0)), [key], last=small)
    assert small.manifest_digest is None and small.raw_bytes == 0  # over its limit: remembers nothing
    last = LastCommit()
    store.commit(_sources(_state(1)), [key], last=last)
    assert last.manifest_digest is not None
    short = TensorSource("x", "uint16", (5,), lambda: np.zeros(2, np.uint8))  # fails after frames were written
    with pytest.raises(UsageError):
        store.commit([*_sources(_state(2)), short], [key], last=last)
    assert last.manifest_digest is None


def test_depth_limit_still_applies_with_memory(tmp_path: Path) -> None:
    steps = [(0.01, ("w",))] * 4
    plain = Series(tmp_path / "plain", False, "compact", depth=2).run(steps)
    kept = Series(tmp_path / "kept", True, "compact", depth=2).run(steps)
    assert kept.frames == plain.frames
    assert [r.counts["delta"] for r in kept.results][1:] == [10, 10, 0, 10]  # depth 1, 2, then full, then 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=3000), st.integers(0, 2999), st.integers(1, 255))
def test_same_bytes_agrees_with_equality(data: bytes, at: int, flip: int) -> None:
    a = np.frombuffer(data, np.uint8)
    assert same_bytes(a, a.copy())
    if data:
        b = a.copy()
        b[at % len(data)] ^= flip
        assert not same_bytes(a, b)
    assert not same_bytes(a, np.zeros(len(data) + 1, np.uint8))


def _tensors(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(a.astype(np.int16, copy=True)) for n, a in state.items()}


def test_the_watchdog_reads_each_export_once_into_recycled_buffers(tmp_path: Path) -> None:
    """The commit takes the very buffers the content digest was checked over; the third export
    reuses the first one's buffers (free once the second state was installed)."""
    store, key = _store(tmp_path / "s")
    last = LastCommit()
    state = _state(0)
    taken: list[set[int]] = []
    for step in range(3):
        if step:
            _step(state, step, 0.01)
        path, _ = write_export(_tensors(state), tmp_path / "outbox", model="m", step=step, pause_s=0.0)
        opened = open_export(path, last)
        buffers = {id(s.load()) for s in opened.model.sources}
        assert buffers == {id(s.load()) for s in opened.model.sources}  # no second read of the file
        taken.append(buffers)
        store.commit(opened.model.sources, [key], last=last)
        opened.close()
    assert taken[2] == taken[0] and not taken[1] & taken[0]
    loaded = api.load(store)
    assert loaded.tensors["w"].numpy().tobytes() == state["w"].astype(np.int16).tobytes()


def test_an_altered_export_is_refused_before_its_buffers_are_used(tmp_path: Path) -> None:
    last = LastCommit()
    path, _ = write_export(_tensors(_state(0)), tmp_path / "outbox", model="m", step=0, pause_s=0.0)
    with path.open("r+b") as f:  # flip one byte of tensor data (the last byte of the file)
        f.seek(-1, 2)
        byte = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ExportFileError, match="content_sha256"):
        open_export(path, last)
    assert last.manifest_digest is None


def test_sealed_store_with_memory_restores_and_reads_no_parent_frame(tmp_path: Path) -> None:
    """Issue 18's sealed frames: deltas made from remembered raw bytes are sealed like any other."""
    kek = FileKek.create(tmp_path / "store.kek")
    key = SigningKey.generate()
    config = StoreConfig(model="m", frame_size=FRAME, policy="compact", encrypt=True)
    store = Store.init(tmp_path / "s", [key.public], config, kek=kek)
    store.good_provider = lambda: {"A": 1, "B": None}
    last = LastCommit()
    state = _state(0)
    store.commit(_sources(state), [key], last=last)
    for step in range(2):
        _step(state, step, 0.01)
        counting = CountingStorage(store.storage.root)
        store.storage = counting
        result, _ = store.commit(_sources(state), [key], last=last)
        assert result.counts["delta"] == 10 and counting.frame_reads == []
    store = Store.open(tmp_path / "s", kek=FileKek(kek.path))
    loaded = api.load(store)
    for name, array in state.items():
        assert loaded.tensors[name].numpy().view(np.uint8).tobytes() == array.view(np.uint8).tobytes()
