"""The model-service process: bind both listeners, start the restore thread, serve with uvicorn, exit with a code.

Owns: the process lifecycle — the network socket is bound *before* the restore starts (a port
conflict is never blamed on a checkpoint), a port held by someone else is waited for with
backoff (``node.port_busy`` event; a node fault, exit 65 after ``port_wait_s``), the control
channel (``control``) is opened on ``RUN/control.sock``, uvicorn runs the network app with the
connection cap and header deadline (``limits``), and a failed bring-up stops the server and
becomes the process's exit code. Does not own behaviour (``runtime``) or routes (``app``).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import AsyncIterator, Callable

import uvicorn
from fastapi import FastAPI

from appliance.errors import ServiceError
from appliance.events import EventLog
from appliance.format.handoff import Phase
from appliance.node import kills
from appliance.node.config import NodeConfig
from appliance.service.app import create_app
from appliance.service.control import ControlServer
from appliance.service.early import EarlyRestore
from appliance.service.limits import bounded_protocol, limit_logging
from appliance.service.runtime import ServiceRuntime

PORT_BUSY = "port"  # ServiceReport error "node_fault" value: boot and guard blame the node, not a checkpoint


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            remedy="free the port or change 'port' in node.json",
        ) from exc
    sock.set_inheritable(True)
    return sock


def bind_waiting(config: NodeConfig, events: EventLog, sleep: Callable[[float], None] = time.sleep) -> socket.socket:
    """Bind the service port; while another process holds it, retry with backoff up to ``port_wait_s``."""
    deadline, delay, told = time.monotonic() + config.port_wait_s, 0.25, False
    while True:
        try:
            return bind(config.host, config.port)
        except ServiceError as exc:
            cause = exc.__cause__
            if not isinstance(cause, OSError) or cause.errno != errno.EADDRINUSE:
                raise
            if not told:
                events.emit("node.port_busy", host=config.host, port=config.port, wait_s=config.port_wait_s)
                told = True
            if time.monotonic() + delay > deadline:
                raise ServiceError(
                    f"{config.host}:{config.port} is held by another process (waited {config.port_wait_s:.0f}s)",
                    remedy="find the holder (`ss -ltnp`) and stop it; the node retries by itself",
                ) from exc
            sleep(delay)
            delay = min(delay * 2, 5.0)


def serve(config: NodeConfig, started: float | None = None, early: EarlyRestore | None = None) -> int:
    """Run the service; ``started`` (monotonic) is when the process began, for the phase timings;
    ``early``: the verified restore already running (``service.early``, model_init meta)."""
    runtime = ServiceRuntime(config, started=started, early=early)
    kills.record(config.run_dir)  # the guard tells an OOM kill from a crash by this counter
    try:
        sock = bind_waiting(config, runtime.events)
    except ServiceError as exc:
        runtime.handoff = runtime.run.read_handoff()
        runtime.error = exc.to_dict() | {"phase": Phase.STARTING.value, "node_fault": PORT_BUSY}
        runtime._enter(Phase.FAILED)
        return exc.exit_code
    control = ControlServer(runtime)
    control.start()
    app = create_app(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        yield

    app.router.lifespan_context = lifespan
    uconfig = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        http=bounded_protocol(config.max_connections, config.header_timeout),
        limit_concurrency=config.max_connections + 8,  # above the cap: the protocol refuses first
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
        server_header=False,
    )
    limit_logging()
    server = uvicorn.Server(uconfig)

    def stop() -> None:
        server.should_exit = True

    runtime.stop_server = stop
    try:
        server.run(sockets=[sock])
    finally:
        control.stop()
    return runtime.exit_code or 0
