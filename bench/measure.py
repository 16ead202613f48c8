"""Running measured operations (a fresh child process each) and recording the machine's load.

Owns: ``run_child`` (a ``bench.child`` op), ``run_tool`` (an external program such as restic),
both returning wall seconds and the process's own peak RSS (``os.wait4``); ``LoadMeter``
(load average and CPU seconds used by *other* processes during the run); reference rates
of this machine measured in the same run (fsync'd write, SHA-256 on all cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def vm_hwm(pid: int | str = "self") -> int:
    """Peak RSS (bytes) of a process's current address space, from ``/proc/PID/status``.

    Not ``ru_maxrss``: Linux folds the parent's RSS at fork/exec into a child's ``ru_maxrss``,
    so a bench parent holding a 2 GB state would inflate every child's figure.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _PeakWatcher(threading.Thread):
    """Samples ``VmHWM`` of a running process every 20 ms (it only grows; the last sample wins)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, vm_hwm(self.pid))


def run_child(op: str, **args: Any) -> dict[str, Any]:
    """Run ``python -m bench.child op`` and return its JSON (which carries its own ``peak_rss``)."""
    cmd = [sys.executable, "-m", "bench.child", op, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.child {op} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run_tool(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Run an external program; wall seconds and its sampled peak RSS. Raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=cwd
    )
    watcher = _PeakWatcher(proc.pid)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    watcher.stop.set()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.strip()[-800:]}")
    return {"seconds": seconds, "peak_rss": watcher.peak or None, "stdout": out[-2000:]}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class LoadMeter:
    """How busy the machine was with other work while the bench ran."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.time(), _busy_seconds(), _own_cpu()
        self.loadavg_start = Path("/proc/loadavg").read_text().split()[:3]

    def result(self) -> dict[str, Any]:
        wall = time.time() - self.t0
        foreign = max(0.0, (_busy_seconds() - self.busy0) - (_own_cpu() - self.own0))
        return {
            "wall_seconds": round(wall, 1),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
            "foreign_cpu_seconds": round(foreign, 1),
            "foreign_cores_average": round(foreign / wall, 2) if wall > 0 else 0.0,
        }


def fsync_write_rate(directory: Path, total: int) -> float:
    """Bytes/s writing ``total`` bytes to one file in 16 MiB blocks, then fsync (the persist anchor)."""
    block = np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    path = directory / "fsync-probe"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(max(1, total // len(block))):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return max(1, total // len(block)) * len(block) / seconds


def sha256_rate(threads: int, total: int = 512 << 20) -> float:
    block = np.full(4 << 20, 3, np.uint8)
    n = total // block.size

    def one(_: int) -> None:
        hashlib.sha256(block.data).digest()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return n * block.size / (time.perf_counter() - t0)


def compress_rate(threads: int, frames: int = 32) -> float:
    """Raw bytes/s of appliance's compact encoder (bf16 N(0, 0.02), 4 MiB frames) on ``threads``."""
    import torch

    from appliance.codec.frames import Scratch, encode
    from appliance.format.codec_name import CodecSpec

    spec = CodecSpec.parse("bg2+zstd-lit")
    g = torch.Generator().manual_seed(3)
    frame = (torch.randn(2 << 20, generator=g) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy()
    local = threading.local()

    def one(_: int) -> None:
        scratch = getattr(local, "scratch", None) or Scratch()
        local.scratch = scratch
        hashlib.sha256(frame.data).digest()  # the raw digest every frame gets
        stored = encode(frame, spec, None, scratch)
        hashlib.sha256(stored).digest()  # and its stored digest

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(frames)))
    return frames * frame.size / (time.perf_counter() - t0)


def set_cache(paths: list[Path], cold: bool) -> None:
    """Put the files under ``paths`` into the page cache (warm) or drop them from it (cold).

    This VM runs DAMON proactive reclaim (``pageout`` of pages idle for a few seconds), so
    "what the commit just wrote is still cached" does not hold; every restore, ours and the
    peers', starts from the same explicitly prepared state instead.
    """
    files = [p for root in paths for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
    buf = bytearray(16 << 20)
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            if cold:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.readv(fd, [buf]):
                    pass
        finally:
            os.close(fd)
