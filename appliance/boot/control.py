"""Controlling supervisord programs over its XML-RPC unix socket.

Owns: ``ServiceControl`` (the interface the boot sequence needs: start, stop, process info)
and ``SupervisorControl`` (supervisord's ``supervisor.*`` XML-RPC through
``supervisor.xmlrpc.SupervisorTransport``). Does not own supervisord's configuration
(``appliance.boot.supervisord_conf``) or deciding what to start.
"""

from __future__ import annotations

import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any, Protocol

from supervisor.xmlrpc import Faults, SupervisorTransport

from appliance.errors import ServiceError, SupervisorUnavailableError

DEAD_STATES = frozenset({"EXITED", "FATAL", "BACKOFF", "STOPPED", "STOPPING", "UNKNOWN"})


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str  # supervisord statename: STARTING, RUNNING, BACKOFF, EXITED, FATAL, STOPPED, ...
    pid: int
    exitstatus: int
    spawnerr: str = ""

    @property
    def alive(self) -> bool:
        return self.state not in DEAD_STATES


class ServiceControl(Protocol):
    def start(self, name: str) -> None: ...

    def stop(self, name: str) -> None: ...

    def info(self, name: str) -> ProcessInfo: ...


class SupervisorControl:
    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _proxy(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy().supervisor, method)(*args)
        except xmlrpc.client.Fault:
            raise
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorUnavailableError(f"supervisord at {self.socket_path} is unreachable: {exc}") from exc

    def wait_ready(self, timeout: float) -> None:
        """Block until supervisord answers RUNNING; ``SupervisorUnavailableError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._call("getState").get("statename") == "RUNNING":
                    return
            except SupervisorUnavailableError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise SupervisorUnavailableError(f"supervisord at {self.socket_path} did not reach RUNNING")
            time.sleep(0.1)

    def start(self, name: str) -> None:
        try:
            self._call("startProcess", name, False)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != Faults.ALREADY_STARTED:
                raise ServiceError(f"supervisord cannot start {name}: {exc.faultString}") from exc

    def stop(self, name: str) -> None:
        try:
            self._call("stopProcess", name, True)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != Faults.NOT_RUNNING:
                raise ServiceError(f"supervisord cannot stop {name}: {exc.faultString}") from exc

    def shutdown(self) -> None:
        """Ask supervisord to stop every program and exit."""
        self._call("shutdown")

    def info(self, name: str) -> ProcessInfo:
        try:
            d = self._call("getProcessInfo", name)
        except xmlrpc.client.Fault as exc:
            raise ServiceError(f"supervisord has no program {name}: {exc.faultString}") from exc
        return ProcessInfo(name, d["statename"], int(d["pid"]), int(d["exitstatus"]), d.get("spawnerr", ""))
