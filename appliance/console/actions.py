"""How the web console runs an action: outside its own process, as a job the pages can follow.

Owns: ``ActionChannel`` (the one interface between the console and the side that acts),
``CliChannel`` (today's implementation: runs ``appliance tech ACTION --json`` as a child
process, the same verb a technician types over SSH or serial) and ``Jobs`` (background runs
with state, elapsed time and result, so a page can show progress of a long scrub, verify or
rollback). Does not own what an action does (``operations``) or its rules.

Interim: until the authenticated control channel (a unix socket with SO_PEERCRED checks, owned
by the persistence side) is on main, ``CliChannel`` is used; on a production node the console's
user cannot read the device key, so the rollback verb must then be run by the persistence side.
Switching is one class: implement ``ActionChannel.run`` over the socket.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

MAX_JOBS = 32
ACTION_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class ActionResult:
    exit_code: int
    data: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code in (0, 1)


Progress = Callable[[int, int], None]  # (done, total) bytes


class ActionChannel(Protocol):
    def run(
        self, action: str, args: Sequence[str], technician: str, progress: Progress | None = None
    ) -> ActionResult: ...


class CliChannel:
    """Runs ``appliance tech ACTION ARGS --config NODE.json --technician NAME --json`` in a child process."""

    def __init__(self, config_path: Path, timeout: float = ACTION_TIMEOUT_S) -> None:
        self.config_path = config_path
        self.timeout = timeout

    def run(self, action: str, args: Sequence[str], technician: str, progress: Progress | None = None) -> ActionResult:
        cmd = [sys.executable, "-m", "appliance.cli.main", "tech", action, *args,
               "--config", str(self.config_path), "--technician", technician, "--json"]  # fmt: skip
        with tempfile.TemporaryFile("w+") as stdout:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)  # noqa: S603
            timer = threading.Timer(self.timeout, proc.kill)
            timer.start()
            try:
                stderr = _follow(proc, progress)
            finally:
                timer.cancel()
            stdout.seek(0)
            out = stdout.read()
        if proc.returncode < 0:
            return ActionResult(124, error={"problem": f"{action} did not finish in {self.timeout:.0f} s"})
        try:
            doc = json.loads(out) if out.strip() else {}
        except ValueError:
            doc = {"output": out[-4000:]}
        if not isinstance(doc, dict):
            doc = {"output": doc}
        if proc.returncode not in (0, 1):
            problem = doc.get("problem") or stderr.strip()[-2000:] or f"exit {proc.returncode}"
            return ActionResult(proc.returncode, error={"problem": problem, "remedy": doc.get("remedy", "")})
        return ActionResult(proc.returncode, doc)


def _follow(proc: subprocess.Popen[str], progress: Progress | None) -> str:
    """Read the child's stderr to its end: progress lines go to ``progress``, the rest is kept (last 8 KiB)."""
    kept: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith('{"progress"'):
            try:
                p = json.loads(line)["progress"]
                if progress is not None:
                    progress(int(p["done"]), int(p["total"]))
                continue
            except (ValueError, KeyError, TypeError):
                pass
        kept.append(line)
        del kept[:-200]
    proc.wait()
    return "".join(kept)[-8192:]


@dataclass(frozen=True)
class Job:
    id: str
    action: str
    technician: str
    params: dict[str, Any]
    started: float
    finished: float | None = None
    result: ActionResult | None = None
    progress: tuple[int, int] | None = None  # (done, total) bytes, for imports

    def to_dict(self, now: float) -> dict[str, Any]:
        end = self.finished if self.finished is not None else now
        r = self.result
        return {
            "id": self.id,
            "action": self.action,
            "technician": self.technician,
            "params": self.params,
            "running": r is None,
            "progress": None if self.progress is None else {"done": self.progress[0], "total": self.progress[1]},
            "elapsed_s": round(end - self.started, 1),
            "ok": None if r is None else r.ok,
            "exit_code": None if r is None else r.exit_code,
            "data": None if r is None else r.data,
            "error": None if r is None else r.error,
        }


class Jobs:
    """Background action runs; one action at a time, so two technicians cannot race each other."""

    def __init__(self, channel: ActionChannel) -> None:
        self.channel = channel
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def busy(self) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.result is None), None)

    def start(self, action: str, args: Sequence[str], technician: str, params: dict[str, Any]) -> Job:
        job = Job(secrets.token_hex(8), action, technician, params, time.monotonic())
        with self._lock:
            if len(self._jobs) >= MAX_JOBS:
                for old in sorted((j for j in self._jobs.values() if j.result), key=lambda j: j.started)[:8]:
                    del self._jobs[old.id]
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, list(args)), daemon=True).start()
        return job

    def _run(self, job: Job, args: list[str]) -> None:
        def progress(done: int, total: int) -> None:
            with self._lock:
                current = self._jobs.get(job.id)
                if current is not None:
                    self._jobs[job.id] = replace(current, progress=(done, total))

        try:
            result = self.channel.run(job.action, args, job.technician, progress)
        except Exception as exc:
            result = ActionResult(3, error={"problem": f"{type(exc).__name__}: {exc}"})
        with self._lock:
            current = self._jobs.get(job.id, job)
            self._jobs[job.id] = replace(current, finished=time.monotonic(), result=result)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def wait(self, job_id: str, timeout: float) -> Job | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job is None or job.result is not None:
                return job
            time.sleep(0.05)
        return self.get(job_id)
