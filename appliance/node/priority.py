"""Running persist work below serving: CPU niceness and I/O priority of a thread.

Owns: ``lower_priority`` — called once at the start of ``appliance persist``, before any thread
exists, and by the model service's export-writer thread when it starts (Linux keeps niceness
and I/O priority per thread; threads inherit them from the thread that creates them, so every
encoder and writer thread of a commit, and the export's digest thread, run at the lowered
priority; an unprivileged thread cannot raise it again, so lowered threads are dedicated ones).
The watchdog and the service share one systemd unit (supervisord's children), so unit-level
``CPUWeight=``/``IOWeight=``/``Nice=`` cannot tell them apart; each lowers its persist threads
instead (supervisord has no per-program niceness). The capture pause is the service's serving
priority and is not affected.

I/O priority: best-effort class, level ``(nice + 20) // 5`` (the kernel's own mapping of CPU
niceness to I/O niceness: nice 10 -> 6), via ``ioprio_set(2)``; honoured by the BFQ and
mq-deadline schedulers, ignored by ``none`` (NVMe's default). Never the idle class: a
watchdog starved of I/O would stop its ``WATCHDOG=1`` pings and be killed by systemd.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

IOPRIO_CLASS_BE = 2
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13
IOPRIO_WHO_PROCESS = 1
SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}  # asm-generic: 30 (arm64)
SYS_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}


@dataclass(frozen=True)
class Priority:
    nice: int  # the calling thread's niceness after the call
    io_class: int | None  # 2 = best-effort; None if ioprio could not be read or set
    io_level: int | None
    problem: str | None = None  # why the I/O priority was not set (the CPU niceness always is)

    def describe(self) -> str:
        io = f"I/O best-effort {self.io_level}" if self.io_class == IOPRIO_CLASS_BE else "I/O priority unchanged"
        return f"nice {self.nice}, {io}" + (f" ({self.problem})" if self.problem else "")


def io_level_for(nice: int) -> int:
    return max(0, min(7, (nice + 20) // 5))


def _syscall(table: dict[str, int], *args: int) -> int:
    number = table.get(platform.machine())
    if number is None:
        raise OSError(0, f"no ioprio syscall number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.syscall(number, *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def io_priority() -> tuple[int, int]:
    """(class, level) of the calling thread."""
    value = _syscall(SYS_IOPRIO_GET, IOPRIO_WHO_PROCESS, 0)
    return value >> IOPRIO_CLASS_SHIFT, value & ((1 << IOPRIO_CLASS_SHIFT) - 1)


def lower_priority(nice: int) -> Priority:
    """Raise the calling thread's niceness to at least ``nice`` and lower its I/O priority to match.

    Never raises priority (a niceness already above ``nice`` stays). ``nice`` 0 changes nothing.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    now = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= 0:
        return Priority(now, None, None, "not lowered (persist_nice 0)")
    level = io_level_for(nice)
    try:
        io_class, io_level = io_priority()
        if io_class == IOPRIO_CLASS_IDLE or (io_class == IOPRIO_CLASS_BE and io_level >= level):
            return Priority(now, io_class, io_level)  # already as low or lower
        _syscall(SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, 0, (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | level)
        io_class, io_level = io_priority()
    except OSError as exc:
        return Priority(now, None, None, f"ioprio_set failed: {exc.strerror or exc}")
    return Priority(now, io_class, io_level)
