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

Errors: a stored frame failing its SHA-256 (or a decoder's own frame check) is ``FrameError``,
the checkpoint's fault; anything else the decoder or the device raises is ``HardwareError``
(exit 70), which ``load_to_device`` answers by decoding the same checkpoint on the CPU.

Sealed checkpoints (docs/design.md §14.5): each frame is read into the worker's own buffer, its
stored SHA-256 checked, then AES-GCM-opened on the CPU straight into its place in the (pinned)
staging buffer; the batch is laid out by payload sizes (stored size - 28), so the device sees
exactly what it sees for a plain checkpoint. The data key never reaches the device.

Runs on any torch device: on ``cpu`` with ``CpuBatchDecoder`` it is what the tests exercise; on
``cuda`` with ``NvcompBatchDecoder`` it is the Jetson path (checked by ``hil/``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from appliance.codec import zstdframe
from appliance.codec.frames import MAX_WINDOW
from appliance.codec.gpu import BatchDecoder, FrameBatch, aligned_layout
from appliance.crypto import FrameCipher
from appliance.errors import ApplianceError, FrameError, HardwareError
from appliance.format.crypto import SEAL_OVERHEAD
from appliance.format.manifest import FrameRef
from appliance.limits import MiB
from appliance.storage import Storage
from appliance.store.discovery import OpenCheckpoint
from appliance.store.keys import cipher_for
from appliance.store.sealed import aad_of
from appliance.store.slot import SlotReader

from .transforms import undo_transforms

BATCH_BYTES = 256 * MiB


@dataclass(frozen=True)
class Step:
    frame: FrameRef  # for a sealed frame: its record with ``size`` = the payload (opened) size
    tensor: str
    offset: int
    sealed: FrameRef | None = None  # the sealed frame's own record (what is read and hashed)


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
    """CPU side: read + verify a batch's stored frames straight into a staging buffer.

    Two staging buffers (pinned on CUDA) are allocated once and alternate between batches:
    batch *i+1* is read into one while the device copies from the other. A buffer is reused
    only after the batch that last used it has been decoded and synchronised.
    """

    def __init__(
        self, reader: SlotReader, pin: bool, workers: int, capacity: int, cipher: FrameCipher | None = None
    ) -> None:
        self.reader = reader
        self.cipher = cipher
        self._local = threading.local()
        self.workers = workers
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._buffers = [torch.empty(max(capacity, 1), dtype=torch.uint8, pin_memory=pin) for _ in range(2)]

    def stage(self, batch: list[Step], parity: int) -> tuple[torch.Tensor, list[int]]:
        offsets, total = aligned_layout([s.frame.size for s in batch])
        staging = self._buffers[parity % 2][: max(total, 1)]
        host = staging.numpy()

        def one(i: int) -> None:
            t0 = time.perf_counter()
            frame = batch[i].frame
            target = memoryview(host[offsets[i] : offsets[i] + frame.size])  # type: ignore[arg-type]
            data = self._read(batch[i], target)
            if frame.codec.compressed:
                zstdframe.check_frame(data, frame.raw_size, MAX_WINDOW)  # one standard frame, exact size
            elif frame.size != frame.raw_size:
                raise FrameError(f"uncompressed frame {frame.digest.short()} is not {frame.raw_size} bytes")
            with self._lock:
                self.seconds += time.perf_counter() - t0

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gpu-stage") as pool:
            list(pool.map(one, range(len(batch))))
        return staging, offsets

    def _read(self, step: Step, target: memoryview) -> memoryview:
        """The step's payload in ``target``: SHA-256 checked before any decoder (or AES-GCM) sees it."""
        if step.sealed is None or self.cipher is None:
            return self.reader.read_frame(step.frame, target)
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < step.sealed.size:
            buf = self._local.buf = bytearray(step.sealed.size)
        stored = self.reader.read_frame(step.sealed, buf)
        self.cipher.open_into(stored, aad_of(self.cipher, step.sealed), target, f"frame {step.sealed.digest.short()}")
        return target


def _sealed_steps(levels: list[list[Step]]) -> list[list[Step]]:
    """Steps of a sealed checkpoint: staged (and decoded) by payload size, read by their sealed record."""
    return [[replace(s, frame=replace(s.frame, size=s.frame.size - SEAL_OVERHEAD), sealed=s.frame) for s in level]
            for level in levels]  # fmt: skip


def restore_to_device(
    storage: Storage,
    opened: OpenCheckpoint,
    device: torch.device | str,
    decoder: BatchDecoder,
    *,
    batch_bytes: int | None = None,  # default: BATCH_BYTES
    workers: int | None = None,
) -> tuple[dict[str, torch.Tensor], GpuRestoreStats]:
    """Restore ``opened`` into new uint8 tensors on ``device`` (name -> flat bytes)."""
    device = torch.device(device)
    manifest = opened.verified.manifest
    dest = {t.name: torch.empty(t.nbytes, dtype=torch.uint8, device=device) for t in manifest.tensors}
    stats = GpuRestoreStats(raw_bytes=manifest.raw_bytes)
    cipher = cipher_for(storage, manifest.encryption)
    levels = plan_levels(opened) if cipher is None else _sealed_steps(plan_levels(opened))
    plan = [batch for level in levels for batch in batches(level, batch_bytes or BATCH_BYTES)]
    capacity = max((aligned_layout([s.frame.size for s in b])[1] for b in plan), default=1)
    start = time.perf_counter()
    reader = SlotReader(storage, opened.slot)
    stager = _Stager(reader, device.type == "cuda", workers or os.cpu_count() or 1, capacity, cipher)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-next") as ahead:
        pending: Future[tuple[torch.Tensor, list[int]]] | None = (
            ahead.submit(stager.stage, plan[0], 0) if plan else None
        )
        for i, batch in enumerate(plan):
            assert pending is not None
            staging, offsets = pending.result()
            # Safe: buffer (i+1) % 2 was last used by batch i-1, decoded and synchronised below.
            pending = ahead.submit(stager.stage, plan[i + 1], i + 1) if i + 1 < len(plan) else None
            _decode_batch(batch, staging, offsets, dest=dest, decoder=decoder, device=device, stats=stats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.seconds = time.perf_counter() - start
    stats.stage_seconds["read_verify"] = stager.seconds
    stats.batches = len(plan)
    return dest, stats


@dataclass(frozen=True)
class Run:
    """Consecutive steps of one batch that one set of torch ops can undo together.

    Same tensor, adjacent destination bytes, same codec and frame size, and payloads back to
    back in the same buffer (decoded scratch for compressed frames, staging otherwise).
    """

    first: int  # index into the batch
    frames: int
    payload_offset: int  # into the decoded scratch (compressed) or the device staging copy
    compressed: bool


RUN_BYTES = 64 * MiB  # bounds one run, and so the xor scratch buffer


def plan_runs(batch: list[Step], payload_offsets: list[int]) -> list[Run]:
    """Group ``batch`` into runs (see ``Run``); a run never exceeds ``RUN_BYTES`` raw bytes."""
    runs: list[Run] = []
    for i, step in enumerate(batch):
        if runs:
            run = runs[-1]
            last = batch[run.first + run.frames - 1]
            frame = step.frame
            if (
                step.tensor == last.tensor
                and step.offset == last.offset + last.frame.raw_size
                and frame.codec == last.frame.codec
                and frame.raw_size == last.frame.raw_size
                and frame.codec.compressed == run.compressed
                and payload_offsets[i] == run.payload_offset + run.frames * frame.raw_size
                and (run.frames + 1) * frame.raw_size <= RUN_BYTES
            ):
                runs[-1] = Run(run.first, run.frames + 1, run.payload_offset, run.compressed)
                continue
        runs.append(Run(i, 1, payload_offsets[i], step.frame.codec.compressed))
    return runs


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
    try:
        _decode_on_device(batch, staging, offsets, dest=dest, decoder=decoder, device=device, stats=stats)
    except ApplianceError:
        raise  # FrameError from a decoder's own frame checks: the checkpoint's fault, as on the CPU path
    except Exception as exc:  # nvCOMP, CUDA or the driver failed: not the checkpoint's fault
        raise HardwareError(
            f"the device decoder failed on a batch of {len(batch)} verified frame(s): {type(exc).__name__}: {exc}"
        ) from exc


def _decode_on_device(
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
    _sync(device)
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
    _sync(device)
    t2 = time.perf_counter()
    where = dict(zip(compressed, out_offsets, strict=True))
    payload_offsets = [where.get(i, offsets[i]) for i in range(len(batch))]
    runs = plan_runs(batch, payload_offsets)
    temp_bytes = max(
        (r.frames * batch[r.first].frame.raw_size for r in runs if batch[r.first].frame.codec.xor), default=1
    )
    temp = torch.empty(temp_bytes, dtype=torch.uint8, device=device)
    for run in runs:
        head = batch[run.first]
        size = run.frames * head.frame.raw_size
        payload = (decoded if run.compressed else src)[run.payload_offset : run.payload_offset + size]
        out = dest[head.tensor][head.offset : head.offset + size]
        undo_transforms(payload, head.frame.codec, out, temp, run.frames)
    _sync(device)
    t3 = time.perf_counter()
    stats.stage_seconds["to_device"] += t1 - t0
    stats.stage_seconds["decode"] += t2 - t1
    stats.stage_seconds["transform"] += t3 - t2
    stats.frames += len(batch)
    stats.stored_bytes += sum(s.frame.size for s in batch)


def _sync(device: torch.device) -> None:
    """Wait for the device, so each stage's time is its own (one sync per stage and batch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
