"""Issue 12, kind 8 on the GPU path (CPU-testable): the stager's SHA-256 check, FrameError, HardwareError.

``CpuBatchDecoder`` on the ``cpu`` device runs the same batched pipeline as nvCOMP on a Jetson.
A decoder that raises mid-restore stands in for an nvCOMP failure (a fault-injection seam).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the GPU path's transforms are torch ops")
from appliance import api  # noqa: E402
from appliance.codec.gpu import CpuBatchDecoder, FrameBatch  # noqa: E402
from appliance.errors import FrameError, HardwareError  # noqa: E402
from appliance.events import EventLog, read_events  # noqa: E402
from appliance.gpu import restore as gpu_restore  # noqa: E402
from appliance.gpu.restore import restore_to_device  # noqa: E402
from appliance.signing import SigningKey  # noqa: E402
from appliance.store import layout  # noqa: E402
from appliance.store.config import StoreConfig  # noqa: E402
from appliance.store.store import Store  # noqa: E402

pytestmark = pytest.mark.unit
KEY = SigningKey.generate()


def _store(tmp: Path, policy: str) -> tuple[Store, dict[str, Any]]:
    store = Store.init(tmp / "s", [KEY.public], StoreConfig(model="m", frame_size=4096, policy=policy))
    g = torch.Generator().manual_seed(1)
    state = {"w": torch.randn(4096, generator=g), "b": torch.randn(100, generator=g)}
    return store, state


def _rot_one_frame(store: Store, slot: str) -> None:
    frames = sorted((Path(store.storage.root) / slot / layout.FRAMES).iterdir())  # type: ignore[attr-defined]
    frame = frames[0]
    frame.chmod(0o644)
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 0x01
    frame.write_bytes(bytes(data))


def test_kind8_damaged_frame_through_the_gpu_stager_raises_frame_error(tmp_path: Path) -> None:
    """Fails if the SHA-256 check is removed from the stager: identity frames would pass through rotten."""
    store, state = _store(tmp_path, "fast")  # identity frames: no decoder check could catch the rot
    api.save(store, state, KEY)
    opened = store.select().opened
    _rot_one_frame(store, opened.slot)
    with pytest.raises(FrameError, match="SHA-256"):
        restore_to_device(store.storage, opened, "cpu", CpuBatchDecoder())


def test_kind8_negative_control_without_the_stager_check_rot_is_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug of the field report (check removed): the test above must be the one that notices."""
    store, state = _store(tmp_path, "fast")
    api.save(store, state, KEY)
    opened = store.select().opened
    _rot_one_frame(store, opened.slot)
    from appliance.store.slot import SlotReader

    monkeypatch.setattr(SlotReader, "read_frame", lambda self, frame, buf=None: self.read_frame_unverified(frame, buf))
    flat, _ = restore_to_device(store.storage, opened, "cpu", CpuBatchDecoder())
    restored = {n: flat[n].view(torch.float32) for n in state}
    assert not all(torch.equal(restored[n], state[n]) for n in state)  # silently corrupted


def test_kind8_damaged_frame_falls_back_to_the_other_checkpoint(tmp_path: Path) -> None:
    store, state = _store(tmp_path, "fast")
    api.save(store, state, KEY)
    newer = {n: t + 1 for n, t in state.items()}
    api.save(store, newer, KEY)
    _rot_one_frame(store, store.select().opened.slot)
    loaded = api.load_to_device(store, "cpu", decoder=CpuBatchDecoder())
    assert loaded.fell_back and loaded.generation == 1
    assert all(torch.equal(loaded.tensors[n], state[n]) for n in state)


class FailingDecoder:
    """Stands in for nvCOMP failing mid-restore (after ``good`` batches)."""

    def __init__(self, good: int = 0) -> None:
        self.calls = 0
        self.good = good
        self.cpu = CpuBatchDecoder()

    def decode(self, src: Any, dst: Any, batch: FrameBatch) -> None:
        self.calls += 1
        if self.calls > self.good:
            raise RuntimeError("nvcompStatus_t 10: nvcompErrorCudaError (injected)")
        self.cpu.decode(src, dst, batch)


def test_kind8_nvcomp_failure_mid_restore_falls_back_to_the_cpu_decode_with_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: an nvCOMP failure escaped load_to_device untyped; HardwareError was never raised."""
    store, state = _store(tmp_path, "compact")
    api.save(store, state, KEY)
    monkeypatch.setattr(gpu_restore, "BATCH_BYTES", 2048)  # several batches: fail after the first
    events = EventLog(tmp_path / "events.jsonl", "test", journal=None)
    with pytest.raises(HardwareError):
        restore_to_device(store.storage, store.select().opened, "cpu", FailingDecoder(good=1), batch_bytes=2048)
    loaded = api.load_to_device(store, "cpu", decoder=FailingDecoder(good=1), events=events)
    assert not loaded.fell_back and loaded.generation == 1 and loaded.stats.mode.startswith("cpu")
    assert all(torch.equal(loaded.tensors[n], state[n]) for n in state)
    fallback = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "restore.gpu_fallback"]
    assert fallback and fallback[0]["fields"]["error"] == "HardwareError"


def test_kind8_exit_70_when_nothing_restores_onto_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, state = _store(tmp_path, "compact")
    api.save(store, state, KEY)

    def broken_copy(tensors: dict[str, Any], dev: Any) -> dict[str, Any]:
        raise HardwareError("copying the verified restore to cuda:0 failed: CUDA error: unspecified launch failure")

    monkeypatch.setattr(api, "_to_device", broken_copy)
    with pytest.raises(HardwareError) as caught:
        api.load_to_device(store, "cpu", decoder=FailingDecoder())
    assert caught.value.exit_code == 70
