"""Batched GPU restore: CPU cores verify frames into staging, one nvCOMP call per batch decodes.

Owns: ``restore_to_device`` — frames grouped by delta level and cut into batches of at most
``BATCH_BYTES`` stored bytes; for each batch, CPU threads read every stored frame and check
its SHA-256 (nothing unverified ever reaches nvCOMP, which "can only operate on valid input"),
copying it into a (pinned, on CUDA) staging buffer at 16-byte-aligned offsets; the staging
buffer is copied to the device, every compressed frame of the batch is decoded by **one**
``decode`` call into a device scratch buffer, and torch ops undo grouping / rotation / xor
straight into the destination tensors. While the device works on batch *i*, the CPU threads
verify batch *i+1* (double buffering). Delta chains restore level by level: every base frame
(level 0) first, then each xor level on top.

Does not own: nvCOMP (``appliance.codec.gpu``), the transforms (``transforms``), or choosing
between this and the CPU path (``appliance.api.load_to_device``).

Runs on any torch device: on ``cpu`` with ``CpuBatchDecoder`` it is what the tests exercise; on
``cuda`` with ``NvcompBatchDecoder`` it is the Jetson path (checked by ``hil/``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from appliance.codec import zstdframe
from appliance.codec.frames import MAX_WINDOW
from appliance.codec.gpu import BatchDecoder, FrameBatch, aligned_layout
from appliance.errors import FrameError
from appliance.format.manifest import FrameRef
from appliance.limits import MiB
from appliance.storage import Storage
from appliance.store.discovery import OpenCheckpoint
from appliance.store.slot import SlotReader

from .transforms import undo_transforms

BATCH_BYTES = 256 * MiB


@dataclass(frozen=True)
class Step:
    frame: FrameRef
    tensor: str
    offset: int


@dataclass
class GpuRestoreStats:
    raw_bytes: int = 0
    stored_bytes: int = 0
    frames: int = 0
    batches: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"read_verify": 0.0, "to_device": 0.0, "decode": 0.0, "transform": 0.0}
    )

    def to_dict(self) -> dict[str, Any]:
        rates = {k: round(self.raw_bytes / v / 1e9, 3) if v > 0 else None for k, v in self.stage_seconds.items()}
        return {
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "frames": self.frames,
            "batches": self.batches,
            "seconds": round(self.seconds, 6),
            "gb_per_s": round(self.raw_bytes / self.seconds / 1e9, 3) if self.seconds > 0 else 0.0,
            "stage_seconds": {k: round(v, 6) for k, v in self.stage_seconds.items()},
            "stage_gb_per_s": rates,
        }


def plan_levels(opened: OpenCheckpoint) -> list[list[Step]]:
    """Level k holds the k-th frame of every delta chain (level 0: full frames and bases)."""
    manifest = opened.verified.manifest
    index = manifest.frame_index()
    levels: list[list[Step]] = []
    for t in manifest.tensors:
        offset = 0
        for frame in t.frames:
            chain = [frame]
            while chain[-1].base is not None:
                chain.append(index[chain[-1].base])
            for level, ref in enumerate(reversed(chain)):
                while len(levels) <= level:
                    levels.append([])
                levels[level].append(Step(ref, t.name, offset))
            offset += frame.raw_size
    return levels


def batches(steps: list[Step], limit: int = BATCH_BYTES) -> Iterator[list[Step]]:
    batch: list[Step] = []
    size = 0
    for step in steps:
        if batch and size + step.frame.size > limit:
            yield batch
            batch, size = [], 0
        batch.append(step)
        size += step.frame.size
    if batch:
        yield batch


class _Stager:
    """CPU side: read + verify a batch's stored frames into a staging buffer."""

    def __init__(self, reader: SlotReader, pin: bool, workers: int) -> None:
        self.reader = reader
        self.pin = pin
        self.workers = workers
        self.seconds = 0.0
        self._local = threading.local()
        self._lock = threading.Lock()

    def stage(self, batch: list[Step]) -> tuple[torch.Tensor, list[int]]:
        offsets, total = aligned_layout([s.frame.size for s in batch])
        staging = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=self.pin)
        host = staging.numpy()

        def one(i: int) -> None:
            t0 = time.perf_counter()
            buf: bytearray | None = getattr(self._local, "buf", None)
            if buf is None or len(buf) < batch[i].frame.size:
                buf = self._local.buf = bytearray(batch[i].frame.size)
            frame = batch[i].frame
            data = self.reader.read_frame(frame, buf)  # SHA-256 checked here, before any decoder sees it
            if frame.codec.compressed:
                zstdframe.check_frame(data, frame.raw_size, MAX_WINDOW)  # one standard frame, exact size
            elif frame.size != frame.raw_size:
                raise FrameError(f"uncompressed frame {frame.digest.short()} is not {frame.raw_size} bytes")
            host[offsets[i] : offsets[i] + len(data)] = np.frombuffer(data, np.uint8)
            with self._lock:
                self.seconds += time.perf_counter() - t0

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gpu-stage") as pool:
            list(pool.map(one, range(len(batch))))
        return staging, offsets


def restore_to_device(
    storage: Storage,
    opened: OpenCheckpoint,
    device: torch.device | str,
    decoder: BatchDecoder,
    *,
    batch_bytes: int = BATCH_BYTES,
    workers: int | None = None,
) -> tuple[dict[str, torch.Tensor], GpuRestoreStats]:
    """Restore ``opened`` into new uint8 tensors on ``device`` (name -> flat bytes)."""
    device = torch.device(device)
    manifest = opened.verified.manifest
    dest = {t.name: torch.empty(t.nbytes, dtype=torch.uint8, device=device) for t in manifest.tensors}
    stager = _Stager(SlotReader(storage, opened.slot), device.type == "cuda", workers or os.cpu_count() or 1)
    stats = GpuRestoreStats(raw_bytes=manifest.raw_bytes)
    plan = [batch for level in plan_levels(opened) for batch in batches(level, batch_bytes)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-next") as ahead:
        pending: Future[tuple[torch.Tensor, list[int]]] | None = ahead.submit(stager.stage, plan[0]) if plan else None
        for i, batch in enumerate(plan):
            assert pending is not None
            staging, offsets = pending.result()
            pending = ahead.submit(stager.stage, plan[i + 1]) if i + 1 < len(plan) else None
            _decode_batch(batch, staging, offsets, dest=dest, decoder=decoder, device=device, stats=stats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.seconds = time.perf_counter() - start
    stats.stage_seconds["read_verify"] = stager.seconds
    stats.batches = len(plan)
    return dest, stats


def _decode_batch(
    batch: list[Step],
    staging: torch.Tensor,
    offsets: list[int],
    *,
    dest: dict[str, torch.Tensor],
    decoder: BatchDecoder,
    device: torch.device,
    stats: GpuRestoreStats,
) -> None:
    t0 = time.perf_counter()
    src = staging.to(device, non_blocking=True)
    t1 = time.perf_counter()
    compressed = [i for i, s in enumerate(batch) if s.frame.codec.compressed]
    out_offsets, out_total = aligned_layout([batch[i].frame.raw_size for i in compressed])
    decoded = torch.empty(max(out_total, 1), dtype=torch.uint8, device=device)
    if compressed:
        decoder.decode(
            src,
            decoded,
            FrameBatch(
                tuple(offsets[i] for i in compressed),
                tuple(batch[i].frame.size for i in compressed),
                tuple(out_offsets),
                tuple(batch[i].frame.raw_size for i in compressed),
            ),
        )
    t2 = time.perf_counter()
    where = dict(zip(compressed, out_offsets, strict=True))
    temp = torch.empty(max((s.frame.raw_size for s in batch), default=1), dtype=torch.uint8, device=device)
    for i, step in enumerate(batch):
        frame = step.frame
        payload = (
            decoded[where[i] : where[i] + frame.raw_size] if i in where else src[offsets[i] : offsets[i] + frame.size]
        )
        out = dest[step.tensor][step.offset : step.offset + frame.raw_size]
        undo_transforms(payload, frame.codec, out, temp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t3 = time.perf_counter()
    stats.stage_seconds["to_device"] += t1 - t0
    stats.stage_seconds["decode"] += t2 - t1
    stats.stage_seconds["transform"] += t3 - t2
    stats.frames += len(batch)
    stats.stored_bytes += sum(s.frame.size for s in batch)
