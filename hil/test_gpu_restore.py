"""GPU restore on real hardware (Jetson AGX Orin or any CUDA GPU with nvidia-nvcomp-cu12 6.x).

Run: ``pip install -e '.[gpu]' && pytest -m hil hil/``. Skips, saying why, without CUDA or nvCOMP.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from appliance import api  # noqa: E402
from appliance.codec.gpu import available  # noqa: E402
from appliance.signing import SigningKey  # noqa: E402
from appliance.sources.tensors import sources_from_dict  # noqa: E402
from appliance.store.config import StoreConfig  # noqa: E402
from appliance.store.store import Store  # noqa: E402

pytestmark = [
    pytest.mark.hil,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (Jetson or discrete GPU)"),
    pytest.mark.skipif(not available().ok, reason=f"nvCOMP not usable: {available().reason}"),
]


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": (torch.randn(1024, 4096, generator=g) * 0.02).to(torch.bfloat16),
        "fp32": torch.randn(3000, 7, generator=g),
        "ids": torch.arange(1000, dtype=torch.int64),
    }


@pytest.mark.parametrize("policy", ["compact", "fast"])
def test_gpu_restore_is_bit_exact_for_full_and_delta_checkpoints(tmp_path: Path, policy: str) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", policy=policy, frame_size=1 << 20))
    state = _state()
    store.commit(sources_from_dict(state), [key])
    tuned = {k: v.clone() for k, v in state.items()}
    tuned["w"].view(-1)[::101] += 0.001
    store.commit(sources_from_dict(tuned), [key])
    loaded = api.load_to_device(store, "cuda")
    assert loaded.stats.mode == "gpu"
    for name, t in tuned.items():
        assert loaded.tensors[name].device.type == "cuda"
        assert torch.equal(loaded.tensors[name].cpu(), t), name


def test_exponent_grouped_frames_decode_on_the_gpu(tmp_path: Path) -> None:
    """eg2+zstd-lit (chosen when a GPU decoder is present) round-trips through nvCOMP."""
    from appliance.codec.frames import encode
    from appliance.format.codec_name import CodecSpec

    spec = CodecSpec.parse("eg2+zstd-lit")
    raw = (torch.randn(1 << 20) * 0.02).to(torch.bfloat16)
    stored = encode(raw.view(torch.uint8).numpy(), spec)
    from appliance.codec.gpu import FrameBatch, NvcompBatchDecoder
    from appliance.gpu.transforms import undo_transforms

    src = torch.frombuffer(bytearray(stored), dtype=torch.uint8).cuda()
    decoded = torch.empty(raw.numel() * 2, dtype=torch.uint8, device="cuda")
    NvcompBatchDecoder(torch.cuda.current_stream().cuda_stream).decode(
        src, decoded, FrameBatch((0,), (len(stored),), (0,), (decoded.numel(),))
    )
    out = torch.empty_like(decoded)
    undo_transforms(decoded, spec, out, torch.empty_like(decoded))
    assert torch.equal(out.cpu(), raw.view(torch.uint8))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_frame_never_reaches_nvcomp_and_the_older_checkpoint_is_served(tmp_path: Path, damage: str) -> None:
    """Guarantee: on the GPU path too, a frame that fails its SHA-256 is refused before decoding.

    Generation 2 (slot B) gets one of its own frames damaged; ``load_to_device`` must serve
    generation 1 from slot A bit-exactly and name the failure, never decode the damaged bytes.
    """
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", policy="compact", frame_size=1 << 20))
    state = _state()
    store.commit(sources_from_dict(state), [key])
    tuned = {k: v.clone() for k, v in state.items()}
    tuned["w"].view(-1)[::7] += 0.01
    store.commit(sources_from_dict(tuned), [key])
    frames = {s: {p.name: p for p in (tmp_path / "s" / s / "frames").iterdir()} for s in ("A", "B")}
    victim = frames["B"][sorted(set(frames["B"]) - set(frames["A"]))[0]]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    loaded = api.load_to_device(store, "cuda")
    assert loaded.stats.mode == "gpu"
    assert (loaded.slot, loaded.generation) == ("A", 1)
    assert [(f.slot, f.generation, type(f.error).__name__) for f in loaded.failures] == [("B", 2, "FrameError")]
    for name, t in state.items():
        assert torch.equal(loaded.tensors[name].cpu(), t), name


@pytest.mark.parametrize("policy", ["compact", "fast"])
def test_sealed_checkpoints_decrypt_on_the_cpu_into_pinned_staging_and_decode_on_the_gpu(
    tmp_path: Path, policy: str
) -> None:
    """Issue 18 (docs/design.md §14.5): a sealed store restores bit-exact through nvCOMP, full and delta."""
    from appliance.crypto import FileKek

    key = SigningKey.generate()
    config = StoreConfig(model="m", policy=policy, frame_size=1 << 20, encrypt=True)
    store = Store.init(tmp_path / "s", [key.public], config, kek=FileKek.create(tmp_path / "s.kek"))
    state = _state()
    store.commit(sources_from_dict(state), [key])
    tuned = {k: v.clone() for k, v in state.items()}
    tuned["w"].view(-1)[::101] += 0.001
    store.commit(sources_from_dict(tuned), [key])
    assert store.select().opened.verified.manifest.encryption is not None
    loaded = api.load_to_device(store, "cuda")
    assert loaded.stats.mode == "gpu"
    for name, t in tuned.items():
        assert torch.equal(loaded.tensors[name].cpu(), t), name
