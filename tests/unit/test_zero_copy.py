"""Zero-copy verified restore: same bytes as the private restore, and never sharing an unsafe file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import FrameError, FrameMissingError
from appliance.signing import SigningKey
from appliance.storage import LocalStorage
from appliance.storage.mapping import PAGE, Region
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.restore import restore_into
from appliance.store.store import Store
from appliance.store.zerocopy import region_array, restore_mapped

pytestmark = pytest.mark.unit
FRAME = 4 * PAGE


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": (rng.normal(0, 0.02, (48, 64)).astype(np.float32)),  # 12 KiB -> 1 frame of 3 pages
        "big": rng.integers(0, 2**16, 3 * FRAME // 2 + 6, dtype=np.uint16),  # several frames, short tail
        "scalar": np.array([7], np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }


def _sources(state: dict[str, np.ndarray]) -> list[TensorSource]:
    names = {np.float32: "float32", np.uint16: "uint16", np.int64: "int64"}
    return [
        TensorSource(n, names[a.dtype.type], a.shape, lambda a=a: np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        for n, a in state.items()
    ]


def _store(tmp_path: Path, policy: str = "fast") -> tuple[Store, dict[str, np.ndarray]]:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "store", [key.public], StoreConfig(model="m", frame_size=FRAME, policy=policy))
    state = _state()
    store.commit(_sources(state), [key])
    return store, state


def _bytes(regions: dict[str, Region]) -> dict[str, bytes]:
    return {n: bytes(r.view()) for n, r in regions.items()}


def test_mapped_restore_equals_the_state_and_shares_page_cache(tmp_path: Path) -> None:
    store, state = _store(tmp_path)
    regions, stats = restore_mapped(store.storage, store.select().opened)
    assert _bytes(regions) == {n: a.tobytes() for n, a in state.items()}
    assert stats.mode == "mapped" and stats.mapped_bytes == stats.raw_bytes and not stats.copy_reasons


def test_writing_a_mapped_tensor_never_reaches_the_frame_file(tmp_path: Path) -> None:
    """Copy-on-write: the tensor is private memory as soon as it is written."""
    store, state = _store(tmp_path)
    opened = store.select().opened
    regions, _ = restore_mapped(store.storage, opened)
    region_array(regions["big"])[:] = 0xEE
    again, _ = restore_mapped(store.storage, opened)
    assert bytes(again["big"].view()) == state["big"].tobytes()


def test_compressed_checkpoint_is_restored_privately_with_reasons(tmp_path: Path) -> None:
    store, state = _store(tmp_path, policy="compact")
    regions, stats = restore_mapped(store.storage, store.select().opened)
    assert _bytes(regions) == {n: a.tobytes() for n, a in state.items()}
    assert stats.mapped_bytes < stats.raw_bytes and set(stats.copy_reasons) <= {"compressed"}


def test_group_writable_frame_file_is_copied_not_shared(tmp_path: Path) -> None:
    """The sealed-file rule: a file others may write is never shared with a tensor."""
    store, state = _store(tmp_path)
    opened = store.select().opened
    frame = opened.verified.manifest.tensor("w").frames[0]
    path = tmp_path / "store" / layout.frame_path(opened.slot, frame.digest)
    path.chmod(0o664)
    regions, stats = restore_mapped(store.storage, opened)
    assert bytes(regions["w"].view()) == state["w"].tobytes()
    assert stats.copy_reasons == {"writable by group or others": 1}


def test_corrupted_frame_fails_after_mapping(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    opened = store.select().opened
    frame = opened.verified.manifest.tensor("big").frames[0]
    path = tmp_path / "store" / layout.frame_path(opened.slot, frame.digest)
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(FrameError, match="SHA-256"):
        restore_mapped(store.storage, opened)


def test_missing_frame_is_reported_as_missing(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    opened = store.select().opened
    frame = opened.verified.manifest.tensor("big").frames[1]
    (tmp_path / "store" / layout.frame_path(opened.slot, frame.digest)).unlink()
    with pytest.raises(FrameMissingError):
        restore_mapped(store.storage, opened)


def test_private_restore_with_prefetch_matches(tmp_path: Path) -> None:
    store, state = _store(tmp_path, policy="compact")
    opened = store.select().opened
    dest = {n: np.empty(a.nbytes, np.uint8) for n, a in state.items()}
    stats = restore_into(LocalStorage(tmp_path / "store"), opened, dest, deep=True, workers=3)
    assert {n: d.tobytes() for n, d in dest.items()} == {n: a.tobytes() for n, a in state.items()}
    assert stats.mode == "private" and stats.frames == sum(len(t.frames) for t in opened.verified.manifest.tensors)
