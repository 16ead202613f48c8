"""A whole node on this machine: node directory + real supervisord + real service, for the demo and tests.

Owns: ``LocalNode`` — creating a development node (``appliance node-init``), running CLI
commands against it in child processes, starting and stopping a real supervisord, talking to
the service over loopback, waiting for catalogued events, and cutting power (SIGSTOP then
SIGKILL of supervisord's whole process tree, then wiping the run directory the way a power
loss wipes ``/run``). Does not own any behaviour of the node itself; every wait has a timeout
so a hang fails loudly instead of blocking.

What a ``kill -9`` power cut does not simulate: data that reached the page cache but not the
disk survives it. Losing that is what the VM tier (QEMU hard reset) tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.boot.control import SupervisorControl
from appliance.events import read_events
from appliance.node import http
from appliance.node.config import NodeConfig, load_config
from appliance.node.control_channel import ControlClient

CLI = [sys.executable, "-m", "appliance.cli.main"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NodeTimeoutError(AssertionError):
    """Something the node should have done within its time limit did not happen."""


class LocalNode:
    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.env = {**os.environ, **(env or {})}
        self.config: NodeConfig = load_config(root / "node.json")
        self.supervisord: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, root: Path, *, env: Mapping[str, str] | None = None, **options: Any) -> LocalNode:
        """``appliance node-init ROOT`` with ``--option value`` per keyword (``True``: a bare flag; port: ephemeral)."""
        options.setdefault("port", free_port())
        argv = ["node-init", str(root)]
        for key, value in options.items():
            flag = f"--{key.replace('_', '-')}"
            argv += [flag] if value is True else [flag, str(value)]
        subprocess.run(CLI + argv, check=True, capture_output=True, timeout=60, env={**os.environ, **(env or {})})  # noqa: S603
        return cls(root, env)

    @property
    def config_path(self) -> Path:
        return self.root / "node.json"

    # --- commands ----------------------------------------------------------------------

    def cli(self, *argv: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run ``appliance ARGV --config NODE.json`` in a child process."""
        cmd = [*CLI, *argv, "--config", str(self.config_path)]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env, check=False)  # noqa: S603
        except subprocess.TimeoutExpired as exc:
            raise NodeTimeoutError(f"`appliance {' '.join(argv)}` did not finish within {timeout}s") from exc

    def cli_json(self, *argv: str, timeout: float = 180.0) -> tuple[int, dict[str, Any]]:
        done = self.cli(*argv, "--json", timeout=timeout)
        try:
            return done.returncode, json.loads(done.stdout)
        except ValueError as exc:
            raise AssertionError(f"appliance {argv} printed no JSON:\n{done.stdout}\n{done.stderr}") from exc

    def seed(self, *, force: bool = False) -> dict[str, Any]:
        """``appliance seed``; ``force``: also on a store that already holds checkpoints."""
        code, data = self.cli_json("seed", *(["--force"] if force else []))
        if code != 0:
            raise AssertionError(f"seed failed ({code}): {data}")
        return data

    def boot(self, timeout: float = 180.0) -> tuple[int, dict[str, Any]]:
        return self.cli_json("boot", timeout=timeout)

    # --- supervisord -------------------------------------------------------------------

    def start(self, timeout: float = 30.0, wait: bool = True) -> None:
        """Start supervisord (its autostarted programs with it); ``wait``: until it answers RUNNING."""
        log = open(self.root / "log" / "supervisord.stdout", "ab")  # noqa: SIM115 (lives as long as the process)
        self.supervisord = subprocess.Popen(  # noqa: S603 (our own interpreter and config)
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.root / "supervisord.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        if wait:
            SupervisorControl(self.config.supervisor_socket).wait_ready(timeout)

    def control(self) -> SupervisorControl:
        return SupervisorControl(self.config.supervisor_socket)

    def stop(self, timeout: float = 60.0) -> None:
        """Orderly shutdown (supervisord stops its programs); falls back to a power cut."""
        if self.supervisord is None:
            return
        try:
            self.control().shutdown()
            self.supervisord.wait(timeout)
        except Exception:
            self.power_cut()
        self.supervisord = None

    def power_cut(self) -> list[int]:
        """Freeze, then SIGKILL supervisord and every descendant at once; wipe the run directory."""
        killed: list[int] = []
        if self.supervisord is not None:
            root = self.supervisord.pid
            pending = _tree(root)
            while pending:
                for pid in pending:
                    _signal(pid, signal.SIGSTOP)
                fresh = [p for p in _tree(root) if p not in killed and p not in pending]
                for pid in pending:
                    _signal(pid, signal.SIGKILL)
                killed += pending
                pending = fresh
            self.supervisord.wait(30)
            self.supervisord = None
        run = Path(self.config.run_dir)
        shutil.rmtree(run, ignore_errors=True)  # /run is a tmpfs: a power loss empties it
        run.mkdir(parents=True, exist_ok=True)
        return killed

    # --- the service and the event log -------------------------------------------------

    def call(self, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        """The network listener (inference, health, readiness)."""
        return http.call(self.config.service_url + path, body, timeout)

    def control_call(self, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        """The control channel (``RUN/control.sock``): adapt, export, status — as this process's user."""
        method = "GET" if body is None else "POST"
        return ControlClient(self.config.control_socket, timeout).call(method, path, body)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.config.event_log, frozenset({name}) if name else None)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 60.0, poll: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise NodeTimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(poll)

    def wait_event(self, name: str, after: int = 0, timeout: float = 60.0) -> dict[str, Any]:
        """The first ``name`` event beyond the ``after`` ones already seen."""

        def newer() -> dict[str, Any] | None:
            found = self.events(name)
            return found[after] if len(found) > after else None

        result: dict[str, Any] = self.wait_for(f"event {name} #{after + 1}", newer, timeout)
        return result

    def wait_serving(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            try:
                status, body = self.call("/ready", timeout=5)
            except Exception:
                return None
            return body if status == 200 else None

        result: dict[str, Any] = self.wait_for("the service to serve", ready, timeout)
        return result


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, pending = [], [root]
    while pending:
        pid = pending.pop(0)
        if pid == root and not Path(f"/proc/{pid}").exists():
            continue
        out.append(pid)
        pending.extend(children.get(pid, []))
    return out
