"""The GPU restore path on CPU: torch transforms equal the CPU codec, and the batched pipeline restores exactly."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

from appliance.codec import zstdframe
from appliance.codec.frames import Scratch, decode_into, encode
from appliance.codec.gpu import CpuBatchDecoder, aligned_layout, available
from appliance.format.codec_name import CodecSpec

torch = pytest.importorskip("torch", reason="the GPU path's transforms are torch ops")
from appliance import api  # noqa: E402
from appliance.gpu.restore import plan_levels, restore_to_device  # noqa: E402
from appliance.gpu.transforms import undo_transforms  # noqa: E402
from appliance.signing import SigningKey  # noqa: E402
from appliance.sources.tensors import sources_from_dict  # noqa: E402
from appliance.store.config import StoreConfig  # noqa: E402
from appliance.store.store import Store  # noqa: E402

pytestmark = pytest.mark.unit
CODECS = ["id", "zstd-lit", "bg2+id", "bg2+zstd-lit", "bg4+zstd-1", "bg8+id", "bg16+zstd-lit", "eg2+zstd-lit",
          "eg4+id", "eg8+zstd-lit", "xor+id", "xor+bg2+zstd-lit", "xor+eg2+zstd-lit", "xor+bg4+id"]  # fmt: skip


@pytest.mark.parametrize("name", CODECS)
def test_device_transforms_equal_the_cpu_codec_byte_for_byte(name: str) -> None:
    spec = CodecSpec.parse(name)
    rng = np.random.default_rng(len(name))
    for size in (16, 4096, 48_000):
        raw = rng.integers(0, 256, size, dtype=np.uint8)
        raw[: size // 4] = 0
        base = rng.integers(0, 256, size, dtype=np.uint8)
        stored = encode(raw, spec, base if spec.xor else None)
        reference = base.copy() if spec.xor else np.zeros(size, np.uint8)
        decode_into(stored, spec, reference, Scratch())
        payload = np.empty(size, np.uint8)
        if spec.compressed:
            zstdframe.decompress_into(stored, payload.data)
        else:
            payload[:] = np.frombuffer(stored, np.uint8)
        out = torch.from_numpy(base.copy() if spec.xor else np.full(size, 0x55, np.uint8))
        undo_transforms(torch.from_numpy(payload), spec, out, torch.empty(size, dtype=torch.uint8))
        assert bytes(out.numpy()) == bytes(reference) == bytes(raw)


def test_aligned_layout_keeps_every_offset_on_16_bytes() -> None:
    offsets, total = aligned_layout([5, 16, 17, 0, 33])
    assert offsets == [0, 16, 32, 64, 64] and total == 112


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": (torch.randn(96, 160, generator=g) * 0.02).to(torch.bfloat16),
        "m": torch.randn(40, 50, generator=g),
        "step": torch.tensor([seed], dtype=torch.int64),
    }


def test_batched_pipeline_restores_full_and_delta_checkpoints_exactly(tmp_path: Path) -> None:
    """Level-ordered batches (bases, then xor levels) give the bytes of the committed state."""
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=8192, keep=3))
    state = _state(0)
    store.commit(sources_from_dict(state), [key])
    tuned = {k: v.clone() for k, v in state.items()}
    flat = tuned["w"].view(-1)
    flat[::97] = (flat[::97].float() + 1e-3).to(torch.bfloat16)
    tuned["step"] += 1
    store.commit(sources_from_dict(tuned), [key])
    opened = store.select().opened
    assert len(plan_levels(opened)) == 2  # the second commit is stored as deltas on the first
    dest, stats = restore_to_device(store.storage, opened, "cpu", CpuBatchDecoder(), batch_bytes=20_000)
    for name, t in tuned.items():
        assert bytes(dest[name].numpy()) == bytes(t.contiguous().view(-1).view(torch.uint8).numpy())
    assert stats.batches > 2 and stats.frames == sum(len(level) for level in plan_levels(opened))


def test_load_to_device_without_a_gpu_logs_and_falls_back_to_the_cpu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m"))
    state = _state(1)
    store.commit(sources_from_dict(state), [key])
    if available().ok:
        pytest.skip("a CUDA device with nvCOMP is present: hil/test_gpu_restore.py covers that path")
    with caplog.at_level(logging.WARNING):
        loaded = api.load_to_device(store, "cpu")
    assert "decoding on the CPU" in caplog.text and available().reason in caplog.text
    assert all(torch.equal(loaded.tensors[k], v) for k, v in state.items())


@pytest.mark.parametrize("name", ["bg2+zstd-lit", "eg2+zstd-lit", "xor+bg4+id", "bg8+id", "id"])
def test_a_run_of_frames_is_undone_exactly_like_each_frame_alone(name: str) -> None:
    """One op over k back-to-back frames (the GPU's run batching) equals k single-frame undos."""
    spec = CodecSpec.parse(name)
    rng = np.random.default_rng(7)
    frame, k = 4096, 5
    payload = torch.from_numpy(rng.integers(0, 256, frame * k, dtype=np.uint8))
    base = torch.from_numpy(rng.integers(0, 256, frame * k, dtype=np.uint8))
    together = base.clone()
    undo_transforms(payload, spec, together, torch.empty(frame * k, dtype=torch.uint8), k)
    alone = base.clone()
    for i in range(k):
        part = slice(i * frame, (i + 1) * frame)
        undo_transforms(payload[part], spec, alone[part], torch.empty(frame, dtype=torch.uint8))
    assert torch.equal(together, alone)


def test_runs_cover_each_step_once_and_only_join_adjacent_equal_frames(tmp_path: Path) -> None:
    """plan_runs: every step in exactly one run, in order; a run is one tensor, one codec, contiguous."""
    from appliance.gpu.restore import batches, plan_runs

    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=4096))
    store.commit(sources_from_dict(_state(3)), [key])
    level = plan_levels(store.select().opened)[0]
    joined = 0
    for batch in batches(level, 10_000):
        offsets, _ = aligned_layout([s.frame.raw_size for s in batch])
        runs = plan_runs(batch, offsets)
        assert [i for r in runs for i in range(r.first, r.first + r.frames)] == list(range(len(batch)))
        for r in runs:
            steps = batch[r.first : r.first + r.frames]
            assert len({(s.tensor, s.frame.codec.name, s.frame.raw_size) for s in steps}) == 1
            assert all(b.offset == a.offset + a.frame.raw_size for a, b in itertools.pairwise(steps))
        joined += sum(r.frames > 1 for r in runs)
    assert joined  # equal full frames of one tensor do join
