"""A short, bounded probe of this device's restore rates: read, hash, decode, first touch.

Owns: measuring ``DeviceRates`` (about one second in total, at most ``SAMPLE_BYTES`` of the
checkpoint's own frames read) and the ``CheckpointShape`` of a manifest. Does not own the
arithmetic (``appliance.format.restore_time``) or presenting it (``appliance.cli``).

Cold reads: when the storage can ``evict`` (``LocalStorage``: ``POSIX_FADV_DONTNEED``), the
sampled frames are dropped from the page cache first, so the read rate is the device's, as a
boot sees it; otherwise the cold rate is the warm one and the report says so.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from appliance.codec import gpu
from appliance.codec.frames import Scratch, decode_into
from appliance.codec.transform import U8
from appliance.crypto import FrameCipher
from appliance.format.manifest import FrameRef, Manifest
from appliance.format.restore_time import CheckpointShape, DeviceRates
from appliance.limits import MiB
from appliance.storage import Storage
from appliance.storage.mapping import PAGE
from appliance.store import layout
from appliance.store.keys import cipher_for
from appliance.store.sealed import open_frame
from appliance.store.slot import SlotReader

SAMPLE_BYTES = 128 * MiB
TRIAL_SECONDS = 0.15
_BLOCK = 4 * MiB


@dataclass(frozen=True)
class ProbeResult:
    rates: DeviceRates
    cold_measured: bool
    sampled_bytes: int
    seconds: float


def _rate(fn: Callable[[], int], seconds: float = TRIAL_SECONDS) -> float:
    """Bytes per second of ``fn`` (returns bytes done), repeated for about ``seconds``."""
    fn()  # warm-up: allocations, caches
    done, start = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def hash_rate() -> float:
    block = np.full(_BLOCK, 7, np.uint8)

    def one() -> int:
        hashlib.sha256(block.data).digest()
        return _BLOCK

    return _rate(one)


def touch_rate() -> float:
    """First write to memory the process never touched (page faults + zeroing), one core."""

    def touch() -> int:
        with mmap.mmap(-1, 16 * MiB) as fresh:
            np.frombuffer(fresh, np.uint8).fill(1)
        return 16 * MiB

    return _rate(touch)


def sample_frames(manifest: Manifest, limit: int = SAMPLE_BYTES) -> list[FrameRef]:
    """Up to ``limit`` stored bytes of frames, spread over the checkpoint, every codec included."""
    frames = sorted(manifest.frame_index().values(), key=lambda f: f.digest.hex)
    chosen: dict[str, FrameRef] = {}
    for f in frames:  # at least one frame per codec
        chosen.setdefault(f.codec.name, f)
    picked = list(chosen.values())
    budget = limit - sum(f.size for f in picked)
    step = max(1, len(frames) // 64)
    for f in frames[::step]:
        if f not in picked and f.size <= budget:
            picked.append(f)
            budget -= f.size
    return picked


def read_rates(storage: Storage, slot: str, frames: list[FrameRef], cores: int) -> tuple[float, float, bool]:
    """(warm copy rate on one core, cold device rate, whether cold was really measured)."""
    reader = SlotReader(storage, slot)
    paths = [layout.frame_path(slot, f.digest) for f in frames]
    evict = getattr(storage, "evict", None)
    cold_measured = callable(evict)
    if callable(evict):
        for path in paths:
            evict(path)
    buffers = [bytearray(max((f.size for f in frames), default=1)) for _ in range(cores)]

    def read(i: int) -> int:
        return len(reader.read_frame_unverified(frames[i], buffers[i % cores]))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cores) as pool:
        total = sum(pool.map(read, range(len(frames))))
    cold = total / max(time.perf_counter() - start, 1e-9)
    warm = _rate(lambda: sum(read(i * cores) for i in range(max(1, len(frames) // cores))))
    return warm, cold, cold_measured


def decode_rates(
    storage: Storage, slot: str, frames: list[FrameRef], cipher: FrameCipher | None = None
) -> dict[str, float]:
    """Raw bytes/s on one core for every compressed codec among ``frames`` (stored bytes verified, opened)."""
    reader = SlotReader(storage, slot)
    rates: dict[str, float] = {}
    scratch = Scratch()
    for f in frames:
        if f.codec.name in rates or not (f.codec.compressed or f.codec.planes) or f.codec.xor:
            continue
        stored = bytes(reader.read_frame(f))
        if cipher is not None:
            stored = bytes(open_frame(cipher, f, stored, scratch))
        out = np.empty(f.raw_size, np.uint8)
        rates[f.codec.name] = _rate(_decoder(stored, f, out, scratch))
    return rates


def _decoder(stored: bytes, frame: FrameRef, out: U8, scratch: Scratch) -> Callable[[], int]:
    def run() -> int:
        decode_into(stored, frame.codec, out, scratch)
        return frame.raw_size

    return run


def probe(storage: Storage, slot: str, manifest: Manifest, cores: int | None = None) -> ProbeResult:
    start = time.perf_counter()
    cores = cores or os.cpu_count() or 1
    frames = sample_frames(manifest)
    warm, cold, cold_measured = read_rates(storage, slot, frames, cores)
    rates = DeviceRates(
        cores=cores,
        hash=hash_rate(),
        read_copy=warm,
        read_cold=cold,
        touch=touch_rate(),
        decode=decode_rates(storage, slot, frames, cipher_for(storage, manifest.encryption)),
        gpu_decoder=gpu.available().ok,
    )
    return ProbeResult(rates, cold_measured, sum(f.size for f in frames), time.perf_counter() - start)


def shape_of(manifest: Manifest, *, zero_copy: bool) -> CheckpointShape:
    """Bytes per codec; with ``zero_copy``, page-aligned ``id`` frames are counted as mapped."""
    by_codec: dict[str, tuple[int, int]] = {}
    mapped = 0
    for frame in manifest.frame_index().values():
        stored, raw = by_codec.get(frame.codec.name, (0, 0))
        by_codec[frame.codec.name] = (stored + frame.size, raw + frame.raw_size)
    if zero_copy:
        for t in manifest.tensors:
            offset = 0
            for frame in t.frames:
                if frame.codec.name == "id" and offset % PAGE == 0:
                    mapped += frame.raw_size
                offset += frame.raw_size
    return CheckpointShape(by_codec, mapped)
