"""Warming the page cache with the checkpoint another process is about to restore (boot, issue 16).

Owns: ``start_warming`` / ``Warming`` — a daemon thread (boot stops it after the trial) that asks
the storage to read a checkpoint's frame files ahead (``prefetch``: ``POSIX_FADV_WILLNEED`` on local
storage), in the order the restore reads them, up to a byte budget. Boot calls it for the candidate
it is about to hand to the
service, so the disk reads of a cold boot overlap the service's interpreter start, torch import
and model build instead of following them. Advisory only: nothing is read into this process,
nothing is trusted (the service still hashes every frame before using it), a missing or
unreadable file is skipped, and the budget (half of ``MemAvailable`` by default) keeps the
warm-up from evicting what the node needs. Does not own the restore's own bounded read-ahead
(``restore.Prefetcher``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.storage import Storage
from appliance.storage.mapping import PrefetchStorage
from appliance.store import layout
from appliance.store.discovery import OpenCheckpoint

MEMINFO = Path("/proc/meminfo")


def available_memory(meminfo: Path = MEMINFO) -> int | None:
    """``MemAvailable`` in bytes, or ``None`` when the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def warm_list(opened: OpenCheckpoint, budget: int) -> list[str]:
    """Frame paths of ``opened`` in restore order (largest first, as the workers take them) within ``budget``."""
    frames = sorted(opened.verified.manifest.frame_index().values(), key=lambda f: -f.raw_size)
    out, used = [], 0
    for frame in frames:
        if used + frame.size > budget:
            break
        used += frame.size
        out.append(layout.frame_path(opened.slot, frame.digest))
    return out


class Warming:
    """The warm-up thread and its stop: boot stops it once the trial is over (the service has read every
    frame it needed by then), so no read-ahead of ours outlives boot's use of the slot — e.g. keeps a
    file of an unmounted slot open (a loop-mounted ext4 test found ``umount``: target is busy)."""

    def __init__(self, storage: PrefetchStorage, paths: list[str]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, paths), name="warm", daemon=True)
        self._thread.start()

    def _run(self, storage: PrefetchStorage, paths: list[str]) -> None:
        for path in paths:
            if self._stop.is_set():
                return
            storage.prefetch(path)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop after the file it is on, and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        self._thread.join(timeout)


def start_warming(storage: Storage, opened: OpenCheckpoint, budget: int | None = None) -> Warming | None:
    """Start the warm-up thread (``None`` if the storage cannot prefetch or the budget is zero)."""
    if not isinstance(storage, PrefetchStorage):
        return None
    if budget is None:
        budget = (available_memory() or 0) // 2
    paths = warm_list(opened, budget)
    if not paths:
        return None
    return Warming(storage, paths)
