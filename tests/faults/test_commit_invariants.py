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
    counts.add("commit regressions")
    assert BOOT(storage, make_config(), keys.trust).recovery
    assert not [p for p in storage.walk() if p.endswith(".commit.json")]


def test_commit_of_a_tensor_toggling_between_two_states_succeeds(keys: Keys) -> None:
    """raw0 -> raw0^M -> raw0: the new delta's bytes equal its base's; the commit still succeeds."""
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    raw0 = _frame(7)
    mask = np.zeros_like(raw0)
    mask[:64] = 0x5A
    generation = 0
    for state in (raw0, raw0 ^ mask, raw0.copy(), raw0 ^ mask):
        result, _ = store.commit(_sources({"flags": state.copy()}), [keys.signer])
        generation = result.generation
    counts.add("commit regressions")
    assert BOOT(storage, make_config(), keys.trust).generation == generation


def test_commit_where_a_new_frame_equals_a_parent_delta_payload_succeeds(keys: Keys) -> None:
    """A full frame whose stored bytes equal a parent delta frame's gets its own digest."""
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    base = np.full(4096, 0x11, np.uint8)
    mask = np.zeros(4096, np.uint8)
    mask[::97] = 3
    store.commit(_sources({"x": base.copy(), "y": _frame(8)}), [keys.signer])
    store.commit(_sources({"x": base ^ mask, "y": _frame(8)}), [keys.signer])  # x: delta whose payload is `mask`
    result, _ = store.commit(_sources({"x": base ^ mask, "y": mask.copy()}), [keys.signer])  # y: full == payload
    counts.add("commit regressions")
    assert BOOT(storage, make_config(), keys.trust).generation == result.generation


def test_commit_where_two_tensors_get_the_same_delta_payload_succeeds(keys: Keys) -> None:
    """Two frames changed by one mask on different bases store equal bytes; both still resolve."""
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    a, b = np.full(4096, 0x21, np.uint8), np.full(4096, 0x42, np.uint8)
    mask = np.zeros(4096, np.uint8)
    mask[::89] = 5
    store.commit(_sources({"a": a.copy(), "b": b.copy()}), [keys.signer])
    result, _ = store.commit(_sources({"a": a ^ mask, "b": b ^ mask}), [keys.signer])
    counts.add("commit regressions")
    assert BOOT(storage, make_config(), keys.trust).generation == result.generation


def test_a_generation_number_is_never_reused_after_its_checkpoint_was_refused(keys: Keys) -> None:
    """Newest checkpoint damaged -> boot refuses it (BAD by generation) -> the next commit still boots."""
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    for seed in (9, 10):
        store.commit(_sources({"w": _frame(seed)}), [keys.signer])
    bundle = "B/checkpoints/00000000000000000002.manifest.json"
    damaged = bytearray(storage.read(bundle, 1 << 20))
    damaged[50] ^= 1
    storage.unlink(bundle)
    storage.write_new(bundle, bytes(damaged))
    assert BOOT(storage, make_config(), keys.trust).generation == 1
    result, _ = store.commit(_sources({"w": _frame(11)}), [keys.signer])
    counts.add("commit regressions")
    assert result.generation == 3, "a number a refused checkpoint still holds was reused"
    assert BOOT(storage, make_config(), keys.trust).generation == 3


def test_first_unused_generation_steps_over_names_and_never_overflows() -> None:
    """Above every valid checkpoint and the floor; skips every name seen; junk at 2^63-1 is harmless."""
    from appliance.format.plan import first_unused_generation

    assert first_unused_generation(3, {1, 2, 3}) == 4
    assert first_unused_generation(3, {4, 5, 2**63 - 1, 10**20}) == 6
    assert first_unused_generation(3, set(), floor=9) == 9
    assert first_unused_generation(0, set()) == 1
