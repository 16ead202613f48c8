"""Verified restore: read -> check stored SHA-256 -> decode -> undo transforms -> place.

Owns: the parallel restore pipeline that writes straight into destination memory (numpy byte
views of the caller's tensors). Does not own choosing the checkpoint (``discovery``) or
allocating tensors (``appliance.api``).

Guarantees:
* Only a ``VerifiedManifest`` (inside an ``OpenCheckpoint``) is accepted.
* No frame byte is decoded before its stored SHA-256 matched the signed manifest.
* Memory is bounded: each worker owns one read buffer and one scratch set of at most one
  frame each; there is no second copy of the model.
* Destinations are byte views (written in place) or ``Sink``s (strided, device or otherwise
  non-byte-addressable destinations: each frame is decoded into the worker's frame-sized
  scratch and handed to ``Sink.write``), so any layout restores with one frame of extra memory
  per worker.
* On any error the restore stops and raises; the destination is then partially written and
  must not be used (the boot path discards it and falls back). ``written`` (if given) is filled
  with the name of every destination *before* its first byte is written, so a caller can say
  exactly which destinations a failed restore touched (``appliance.api.load``).

Speed (docs/performance.md): one worker per core over independent frames (hashlib, zstandard
and numpy release the GIL); each frame is read into the worker's reused, already-touched
buffer (page cache -> cache-hot buffer), hashed there, then copied or decoded once into the
destination. Storage that can ``prefetch`` gets a bounded read-ahead hint (``READ_AHEAD``
bytes past the frame being worked on) so cold reads overlap hashing and decoding. The
zero-copy variant for ``fast`` checkpoints is ``appliance.store.zerocopy``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from appliance.codec.frames import Scratch
from appliance.codec.transform import U8
from appliance.crypto import FrameCipher
from appliance.errors import FrameError, TensorMismatchError
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef
from appliance.limits import MiB
from appliance.storage import Storage
from appliance.storage.mapping import PrefetchStorage
from appliance.store import layout
from appliance.store.discovery import OpenCheckpoint
from appliance.store.keys import cipher_for
from appliance.store.sealed import decode_stored, raw_matches
from appliance.store.slot import SlotReader

Progress = Callable[[int], None]
READ_AHEAD = 64 * MiB


@runtime_checkable
class Sink(Protocol):
    """A destination that is not a writable byte view: it takes each frame's decoded bytes."""

    nbytes: int

    def write(self, offset: int, data: U8) -> None:
        """Place ``data`` (decoded tensor bytes) at byte ``offset`` of the tensor's C-order bytes."""
        ...


Destination = U8 | Sink


@dataclass(frozen=True)
class Task:
    frame: FrameRef
    name: str
    out: Destination  # the frame's own slice of a byte view, or the tensor's sink
    offset: int  # byte offset of the frame within its tensor


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over workers (so they can exceed wall time)."""

    read: float = 0.0
    hash: float = 0.0
    decode: float = 0.0
    deep: float = 0.0

    def add(self, other: StageTimes) -> None:
        self.read += other.read
        self.hash += other.hash
        self.decode += other.decode
        self.deep += other.deep


@dataclass
class RestoreStats:
    generation: int
    slot: str
    raw_bytes: int = 0
    stored_bytes_read: int = 0
    frames: int = 0
    seconds: float = 0.0
    workers: int = 1
    stages: StageTimes = field(default_factory=StageTimes)
    mode: str = "private"  # "private": bytes copied into caller memory; "mapped": zero-copy (zerocopy.py)
    mapped_bytes: int = 0  # bytes shared with the page cache instead of copied
    copy_reasons: dict[str, int] = field(default_factory=dict)  # mapped mode: why frames were copied

    @property
    def gbps(self) -> float:
        return self.raw_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "slot": self.slot,
            "raw_bytes": self.raw_bytes,
            "stored_bytes_read": self.stored_bytes_read,
            "frames": self.frames,
            "seconds": round(self.seconds, 6),
            "gb_per_s": round(self.gbps, 3),
            "workers": self.workers,
            "stage_seconds": {k: round(v, 6) for k, v in vars(self.stages).items()},
            "mode": self.mode,
            "mapped_bytes": self.mapped_bytes,
            "copy_reasons": dict(self.copy_reasons),
        }


class _Worker:
    """Per-thread state: a read buffer, decode scratch, a sink buffer and stage timers."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.scratch = Scratch()
        self.out = np.empty(0, np.uint8)
        self.times = StageTimes()
        self.stored = 0


class FrameDecoder:
    """Decodes frames (and their delta chains) of one slot into destination slices.

    ``cipher`` opens sealed frames (``cipher_for(storage, manifest.encryption)``; None: plain),
    after their stored SHA-256 matched and before anything decodes them.
    """

    def __init__(self, reader: SlotReader, index: Mapping[Digest, FrameRef], cipher: FrameCipher | None) -> None:
        self.reader = reader
        self.index = index
        self.cipher = cipher
        self._local = threading.local()
        self.workers: list[_Worker] = []
        self._lock = threading.Lock()

    def _worker(self) -> _Worker:
        w: _Worker | None = getattr(self._local, "w", None)
        if w is None:
            w = _Worker()
            self._local.w = w
            with self._lock:
                self.workers.append(w)
        return w

    def sink_buffer(self, size: int) -> U8:
        """This worker's reused buffer for a frame headed to a ``Sink`` (``size`` bytes)."""
        w = self._worker()
        if w.out.size < size:
            w.out = np.empty(size, np.uint8)
        return w.out[:size]

    def decode(self, frame: FrameRef, out: U8) -> None:
        """Write the raw bytes of ``frame`` into ``out``; bases first, each verified."""
        if frame.base is not None:
            self.decode(self.index[frame.base], out)
        w = self._worker()
        if len(w.buf) < frame.size:
            w.buf = bytearray(frame.size)
        t0 = time.perf_counter()
        stored = self.reader.read_frame_unverified(frame, w.buf)
        t1 = time.perf_counter()
        self.reader.verify_frame(frame, stored)
        t2 = time.perf_counter()
        decode_stored(stored, frame, out, w.scratch, self.cipher)
        w.times.read += t1 - t0
        w.times.hash += t2 - t1
        w.times.decode += time.perf_counter() - t2
        w.stored += frame.size


class Prefetcher:
    """Bounded read-ahead: hints the frames up to ``window`` bytes past the one being worked on."""

    def __init__(self, storage: Storage, slot: str, frames: list[FrameRef], window: int = READ_AHEAD) -> None:
        self.storage = storage if isinstance(storage, PrefetchStorage) else None
        self.slot = slot
        self.frames = frames
        self.window = window
        self._next = 0
        self._lock = threading.Lock()

    def ahead_of(self, index: int) -> None:
        if self.storage is None:
            return
        with self._lock:
            start, budget, end = max(self._next, index), self.window, self._next
            for end in range(start, len(self.frames)):
                budget -= self.frames[end].size
                if budget < 0:
                    break
            else:
                end = len(self.frames)
            self._next = max(self._next, end)
        for frame in self.frames[start:end]:
            self.storage.prefetch(layout.frame_path(self.slot, frame.digest))


def destination_views(opened: OpenCheckpoint, dest: Mapping[str, Destination]) -> dict[str, Destination]:
    """Check that ``dest`` has a byte view or sink of the right size for every tensor, and nothing else."""
    manifest = opened.verified.manifest
    names = {t.name for t in manifest.tensors}
    extra, missing = set(dest) - names, names - set(dest)
    if extra or missing:
        raise TensorMismatchError(
            f"destination tensors differ from the checkpoint: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
        )
    views: dict[str, Destination] = {}
    for t in manifest.tensors:
        view = dest[t.name]
        if isinstance(view, Sink):
            if view.nbytes != t.nbytes:
                raise TensorMismatchError(f"destination for {t.name!r} takes {view.nbytes} bytes, not {t.nbytes}")
            views[t.name] = view
            continue
        if view.dtype != np.uint8 or view.ndim != 1 or view.size != t.nbytes or not view.flags.writeable:
            raise TensorMismatchError(f"destination for {t.name!r} is not a writable {t.nbytes}-byte view")
        views[t.name] = view
    return views


def frame_tasks(opened: OpenCheckpoint, views: Mapping[str, Destination]) -> list[Task]:
    """Every tensor frame with its destination, large frames first (load balance).

    A tensor missing from ``views`` is skipped: its bytes are another destination's (aliasing
    resolved by the caller, ``appliance.sources.destinations``).
    """
    tasks: list[Task] = []
    for t in opened.verified.manifest.tensors:
        if t.name not in views:
            continue
        view, offset = views[t.name], 0
        for frame in t.frames:
            out = view if isinstance(view, Sink) else view[offset : offset + frame.raw_size]
            tasks.append(Task(frame, t.name, out, offset))
            offset += frame.raw_size
    tasks.sort(key=lambda task: -task.frame.raw_size)
    return tasks


def worker_count(workers: int | None, tasks: int) -> int:
    return max(1, min(workers or os.cpu_count() or 1, tasks or 1))


def restore_into(
    storage: Storage,
    opened: OpenCheckpoint,
    dest: Mapping[str, Destination],
    *,
    deep: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    skip: frozenset[str] = frozenset(),
    written: set[str] | None = None,
) -> RestoreStats:
    """Restore ``opened`` into ``dest`` (tensor name -> uint8 view or ``Sink``).

    ``skip`` names tensors whose destination is another tensor's memory (tied weights whose
    frames were checked equal); they are neither read nor written. ``written`` receives each
    destination's name just before its first byte is written.
    """
    manifest = opened.verified.manifest
    views = {n: v for n, v in destination_views(opened, dest).items() if n not in skip}
    reader = SlotReader(storage, opened.slot)
    decoder = FrameDecoder(reader, manifest.frame_index(), cipher_for(storage, manifest.encryption))
    tasks = frame_tasks(opened, views)
    prefetcher = Prefetcher(storage, opened.slot, [task.frame for task in tasks])
    n_workers = worker_count(workers, len(tasks))
    stats = RestoreStats(opened.generation, opened.slot, raw_bytes=manifest.raw_bytes, workers=n_workers)
    touched = written if written is not None else set()
    lock = threading.Lock()

    def run(index: int) -> None:
        task = tasks[index]
        frame = task.frame
        prefetcher.ahead_of(index)
        if task.name not in touched:
            with lock:
                touched.add(task.name)
        if isinstance(task.out, Sink):
            out = decoder.sink_buffer(frame.raw_size)
            decoder.decode(frame, out)
            if deep:
                check_raw(decoder, frame, out)
            task.out.write(task.offset, out)
        else:
            decoder.decode(frame, task.out)
            if deep:
                check_raw(decoder, frame, task.out)
        if progress is not None:
            progress(frame.raw_size)

    start = time.perf_counter()
    run_all(run, len(tasks), n_workers)
    stats.seconds = time.perf_counter() - start
    collect(decoder, stats)
    stats.frames = len(tasks)
    return stats


def check_raw(decoder: FrameDecoder, frame: FrameRef, out: U8) -> None:
    """Deep mode: the decoded bytes match the manifest's raw identity (SHA-256, or the keyed digest)."""
    t0 = time.perf_counter()
    if not raw_matches(decoder.cipher, frame, out.data):
        raise FrameError(f"frame {frame.digest.short()} decodes to bytes that fail its raw digest")
    decoder._worker().times.deep += time.perf_counter() - t0


def collect(decoder: FrameDecoder, stats: RestoreStats) -> None:
    for w in decoder.workers:
        stats.stages.add(w.times)
        stats.stored_bytes_read += w.stored


def run_all(fn: Callable[[int], None], count: int, workers: int) -> None:
    """Run ``fn(0..count-1)`` on ``workers`` threads; the first error cancels the rest."""
    if workers == 1:
        for index in range(count):
            fn(index)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
        futures = [pool.submit(fn, index) for index in range(count)]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in done:
            exc = f.exception()
            if exc is not None:
                raise exc
