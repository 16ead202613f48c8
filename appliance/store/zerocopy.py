"""Zero-copy verified restore: tensors that share the page cache with sealed ``id`` frame files.

Owns: ``restore_mapped`` — one ``Region`` per tensor; every uncompressed, page-aligned frame
of a sealed file is mapped copy-on-write into its place and hashed where it lies (no read
copy, no fresh memory); every other frame is restored privately into the region exactly as
``restore.restore_into`` does. Does not own the safety rule (``appliance.storage.mapping``)
or turning regions into tensors (``appliance.api``).

When a frame is copied instead of mapped, the reason is counted in
``RestoreStats.copy_reasons``: ``compressed`` (the bytes must be decoded), ``delta`` (xor
frames apply onto their base), ``unaligned`` (the frame does not start on a page),
``storage cannot map`` (a ``Storage`` without the capability), or the sealed-file rule's
reason (for example ``writable by group or others``).

Guarantees are those of ``restore_into`` (nothing is used before its SHA-256 matched; any
error aborts the whole restore), plus: a mapped frame is hashed after it is mapped, from the
mapping itself, so the verified bytes are the bytes the tensor sees, for as long as the file
stays sealed (see the module docs of ``appliance.storage.mapping`` for what that covers).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from appliance.codec.transform import U8
from appliance.errors import FrameError, FrameMissingError
from appliance.format.codec_name import IDENTITY
from appliance.format.manifest import FrameRef, TensorEntry
from appliance.storage import Storage
from appliance.storage.mapping import MappingStorage, Region, page_aligned
from appliance.store import layout
from appliance.store.discovery import OpenCheckpoint
from appliance.store.keys import cipher_for
from appliance.store.restore import (
    FrameDecoder,
    Prefetcher,
    RestoreStats,
    check_raw,
    collect,
    run_all,
    worker_count,
)
from appliance.store.slot import SlotReader

Progress = Callable[[int], None]


@dataclass(frozen=True)
class _Placement:
    frame: FrameRef
    region: Region
    offset: int


class _Mapper:
    """Maps one frame into its region and verifies it in place; counts what it did."""

    def __init__(self, storage: Storage, slot: str) -> None:
        self.storage = storage if isinstance(storage, MappingStorage) else None
        self.slot = slot
        self.mapped_bytes = 0
        self.reasons: dict[str, int] = {}
        self.hash_seconds = 0.0
        self.map_seconds = 0.0
        self._lock = threading.Lock()

    def why_not(self, p: _Placement) -> str | None:
        if p.frame.codec != IDENTITY:
            return "delta" if p.frame.codec.xor else "compressed"
        if not page_aligned(p.offset):
            return "unaligned"
        if self.storage is None:
            return "storage cannot map"
        return None

    def count_copy(self, reason: str) -> None:
        self._count(reason, 0, 0.0, 0.0)

    def try_map(self, p: _Placement) -> bool:
        reason = self.why_not(p)
        if reason is None and self.storage is not None:
            t0 = time.perf_counter()
            path = layout.frame_path(self.slot, p.frame.digest)
            try:
                reason = self.storage.map_into(path, p.region, p.offset, p.frame.size)
            except FileNotFoundError as exc:
                raise FrameMissingError(f"frame {p.frame.digest.short()} is missing from slot {self.slot}") from exc
            t1 = time.perf_counter()
            if reason is None:
                self._verify(p)
            self._count(reason, p.frame.size, t1 - t0, time.perf_counter() - t1)
            return reason is None
        self._count(reason, 0, 0.0, 0.0)
        return False

    def _verify(self, p: _Placement) -> None:
        view = p.region.view()[p.offset : p.offset + p.frame.size]
        if hashlib.sha256(view).hexdigest() != p.frame.digest.hex:
            raise FrameError(f"frame {p.frame.digest.short()} in slot {self.slot} fails its SHA-256 (corrupted)")

    def _count(self, reason: str | None, mapped: int, map_s: float, hash_s: float) -> None:
        with self._lock:
            self.map_seconds += map_s
            self.hash_seconds += hash_s
            if reason is None:
                self.mapped_bytes += mapped
            else:
                self.reasons[reason] = self.reasons.get(reason, 0) + 1


def allocate_regions(tensors: tuple[TensorEntry, ...]) -> dict[str, Region]:
    return {t.name: Region(t.nbytes) for t in tensors}


def region_array(region: Region) -> U8:
    """A writable uint8 numpy view of the region's ``size`` bytes."""
    return np.frombuffer(region.memory, np.uint8, count=region.size)


def restore_mapped(
    storage: Storage,
    opened: OpenCheckpoint,
    *,
    deep: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Region], RestoreStats]:
    """Restore ``opened`` into new regions (tensor name -> ``Region``), zero-copy where safe."""
    manifest = opened.verified.manifest
    regions = allocate_regions(manifest.tensors)
    placements: list[_Placement] = []
    for t in manifest.tensors:
        offset = 0
        for frame in t.frames:
            placements.append(_Placement(frame, regions[t.name], offset))
            offset += frame.raw_size
    placements.sort(key=lambda p: -p.frame.raw_size)
    cipher = cipher_for(storage, manifest.encryption)
    decoder = FrameDecoder(SlotReader(storage, opened.slot), manifest.frame_index(), cipher)
    mapper = _Mapper(storage, opened.slot)
    prefetcher = Prefetcher(storage, opened.slot, [p.frame for p in placements])
    n_workers = worker_count(workers, len(placements))
    stats = RestoreStats(opened.generation, opened.slot, raw_bytes=manifest.raw_bytes, workers=n_workers)
    stats.mode = "mapped"

    def run(index: int) -> None:
        p = placements[index]
        prefetcher.ahead_of(index)
        if cipher is not None:  # sealed bytes are never the tensor's bytes: decrypted into private memory
            mapper.count_copy("sealed")
        if cipher is None and mapper.try_map(p):
            if deep and p.frame.raw_digest != p.frame.digest:  # an id frame's bytes are its raw bytes
                raise FrameError(f"frame {p.frame.digest.short()} is uncompressed but names another raw SHA-256")
        else:
            out = region_array(p.region)[p.offset : p.offset + p.frame.raw_size]
            decoder.decode(p.frame, out)
            if deep:
                check_raw(decoder, p.frame, out)
        if progress is not None:
            progress(p.frame.raw_size)

    start = time.perf_counter()
    run_all(run, len(placements), n_workers)
    stats.seconds = time.perf_counter() - start
    collect(decoder, stats)
    stats.frames = len(placements)
    stats.mapped_bytes = mapper.mapped_bytes
    stats.stored_bytes_read += mapper.mapped_bytes
    stats.copy_reasons = dict(mapper.reasons)
    stats.stages.read += mapper.map_seconds
    stats.stages.hash += mapper.hash_seconds
    return regions, stats
