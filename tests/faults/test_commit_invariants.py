"""Regression tests for commit bugs the fault suites found (each failed before its fix).

W3 (docs/design.md §6): when the commit record is written, the target slot holds every frame
the manifest names. A commit that is acknowledged but cannot boot loses the acked checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import appliance.store.commit as commit_module
from appliance.store.encode import EncodedFrame, FrameEncoder, FrameJob, TensorSource
from appliance.store.store import Store

from . import counts
from .boot import BOOT
from .model import Keys, empty_store_storage, make_config

pytestmark = pytest.mark.faults


def _sources(tensors: dict[str, np.ndarray]) -> list[TensorSource]:
    return [TensorSource(n, "float32", (a.size // 4,), (lambda a=a: a)) for n, a in tensors.items()]


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8)


def test_commit_reusing_a_frame_a_discarded_delta_claimed_still_boots(keys: Keys) -> None:
    """A parent frame claimed by a rejected delta attempt and reused elsewhere is still written."""
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    shared = _frame(1)
    store.commit(_sources({"x": shared.copy(), "y": _frame(2)}), [keys.signer])
    # x changes completely (its delta on `shared` is rejected), y now equals x's old frame (reuse).
    result, _ = store.commit(_sources({"x": _frame(3), "y": shared.copy()}), [keys.signer])
    counts.add("commit regressions")
    assert BOOT(storage, make_config(), keys.trust).generation == result.generation


def test_commit_boots_whatever_order_its_frames_finish_encoding(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames encoded out of submission order (thread timing) still all land in the slot."""

    def reversed_encode_all(
        encoder: FrameEncoder, jobs: Iterator[FrameJob], workers: int | None = None
    ) -> Iterator[tuple[FrameJob, EncodedFrame]]:
        todo = list(jobs)
        done = {id(j): encoder.encode_frame(j.name, j.index, j.dtype, j.raw) for j in reversed(todo)}
        return iter([(j, done[id(j)]) for j in todo])

    monkeypatch.setattr(commit_module, "encode_all", reversed_encode_all)
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    zeros = np.zeros(8192, np.uint8)  # two identical frames: both reuse one parent frame
    store.commit(_sources({"m": zeros.copy(), "w": _frame(4)}), [keys.signer])
    result, _ = store.commit(_sources({"m": zeros.copy(), "w": _frame(5)}), [keys.signer])
    counts.add("commit regressions")
    assert BOOT(storage, make_config(), keys.trust).generation == result.generation


def test_commit_never_acknowledges_a_checkpoint_missing_a_frame(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a frame failed to land in the slot, the commit raises before its record is written."""
    from appliance.errors import FrameMissingError

    placer = commit_module._FramePlacer
    original = placer.place

    def drop_first_frame(self: commit_module._FramePlacer, encoded: EncodedFrame) -> None:
        if not self.placed:
            self.placed.add(encoded.ref.digest)  # pretend it was written
            return
        original(self, encoded)

    monkeypatch.setattr(placer, "place", drop_first_frame)
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    with pytest.raises(FrameMissingError):
        store.commit(_sources({"w": _frame(6)}), [keys.signer])
    assert BOOT(storage, make_config(), keys.trust).recovery
    assert not [p for p in storage.walk() if p.endswith(".commit.json")]
