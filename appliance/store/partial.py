"""Partition-aware restore: only the named tensors of a checkpoint, verified like a full restore.

Owns: ``restore_selected``. It reuses the full restore's pieces (``appliance.store.restore``):
only the frames of the chosen tensors (and their delta bases) are read, each checked against
its stored SHA-256 before it is decoded; ``deep`` also checks raw SHA-256s. Does not own
choosing the tensors (``appliance.api``) or the checkpoint (``discovery``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from appliance.codec.transform import U8
from appliance.errors import TensorMismatchError
from appliance.format.frame import FrameRef
from appliance.storage import Storage
from appliance.store.discovery import OpenCheckpoint
from appliance.store.keys import cipher_for
from appliance.store.restore import FrameDecoder, RestoreStats, check_raw, collect, run_all, worker_count
from appliance.store.slot import SlotReader


def restore_selected(
    storage: Storage,
    opened: OpenCheckpoint,
    dest: Mapping[str, U8],
    *,
    deep: bool = False,
    workers: int | None = None,
) -> RestoreStats:
    """Restore the tensors named by ``dest`` (name -> writable uint8 view of ``nbytes``) only."""
    manifest = opened.verified.manifest
    tasks: list[tuple[FrameRef, U8]] = []
    raw_bytes = 0
    for name, view in dest.items():
        try:
            entry = manifest.tensor(name)
        except KeyError:
            raise TensorMismatchError(f"the checkpoint has no tensor {name!r}") from None
        if view.dtype != np.uint8 or view.ndim != 1 or view.size != entry.nbytes or not view.flags.writeable:
            raise TensorMismatchError(f"destination for {name!r} is not a writable {entry.nbytes}-byte view")
        offset = 0
        for frame in entry.frames:
            tasks.append((frame, view[offset : offset + frame.raw_size]))
            offset += frame.raw_size
        raw_bytes += entry.nbytes
    cipher = cipher_for(storage, manifest.encryption)
    decoder = FrameDecoder(SlotReader(storage, opened.slot), manifest.frame_index(), cipher)
    n_workers = worker_count(workers, len(tasks))
    stats = RestoreStats(opened.generation, opened.slot, raw_bytes=raw_bytes, workers=n_workers)

    def run(index: int) -> None:
        frame, out = tasks[index]
        decoder.decode(frame, out)
        if deep:
            check_raw(decoder, frame, out)

    start = time.perf_counter()
    run_all(run, len(tasks), n_workers)
    stats.seconds = time.perf_counter() - start
    collect(decoder, stats)
    stats.frames = len(tasks)
    return stats
