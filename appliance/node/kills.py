"""Kernel evidence that a process was killed for memory: OOM-kill counters of its cgroup, then of the system.

Owns: finding the memory cgroup of a process (cgroup v2 ``memory.events``, cgroup v1
``memory.oom_control``; both carry an ``oom_kill`` count), reading the count, and the witness
file ``RUN/service-oom.json`` the model service writes when it starts (its pid, the counter it
lives under and the count then). Does not own deciding whom to blame (``appliance.boot.guard``).

Why counters and not the exit status: supervisord reports a signal death only as ``-1`` and
forgets even that when it respawns the program; and a ``SIGKILL`` alone does not say who sent
it (a model may kill itself). An OOM kill — by the global OOM killer, a cgroup memory limit or
systemd's ``MemoryMax`` — increments ``oom_kill`` of the cgroup it happened in (and the
system's ``/proc/vmstat`` ``oom_kill``), which the dying process cannot fake.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

WITNESS = "service-oom.json"
CGROUP_ROOT = Path("/sys/fs/cgroup")
VMSTAT = Path("/proc/vmstat")


def counter_of(pid: int | str = "self") -> Path:
    """The file holding the ``oom_kill`` count for ``pid``'s memory cgroup (``/proc/vmstat`` if none)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return VMSTAT
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            candidate = CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.oom_control"
            if candidate.exists():
                return candidate
    for line in lines:
        if line.startswith("0::"):  # cgroup v2, mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified
            rel = line[3:].lstrip("/")
            for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
                candidate = root / rel / "memory.events"
                if candidate.exists():
                    return candidate
    return VMSTAT


def oom_kills(counter: Path) -> int | None:
    """The ``oom_kill`` count in ``counter`` (``None`` if it cannot be read)."""
    try:
        text = counter.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


@dataclass(frozen=True)
class Witness:
    pid: int
    counter: str
    count: int

    @classmethod
    def now(cls, pid: int | None = None) -> Witness | None:
        pid = pid or os.getpid()
        counter = counter_of(pid)
        count = oom_kills(counter)
        return None if count is None else cls(pid, str(counter), count)

    def write(self, run_dir: str | Path) -> None:
        path = Path(run_dir) / WITNESS
        tmp = path.with_name(f".{WITNESS}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"pid": self.pid, "counter": self.counter, "count": self.count}))
        tmp.replace(path)

    @classmethod
    def read(cls, run_dir: str | Path) -> Witness | None:
        try:
            d = json.loads((Path(run_dir) / WITNESS).read_text())
            return cls(int(d["pid"]), str(d["counter"]), int(d["count"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def oom_killed_since(self) -> str:
        """Why the kernel (not the process) ended it: ``"the kernel (out of memory)"``..., or ``""``."""
        now = oom_kills(Path(self.counter))
        if now is None or now <= self.count:
            return ""
        return "the kernel's OOM killer (system memory)" if self.counter == str(VMSTAT) else (
            "the kernel's OOM killer (memory limit of its cgroup)")  # fmt: skip


def record(run_dir: str | Path) -> None:
    """The service's start: write the witness (never fatal; without it kills count as crashes)."""
    with contextlib.suppress(OSError):
        witness = Witness.now()
        if witness is not None:
            witness.write(run_dir)
