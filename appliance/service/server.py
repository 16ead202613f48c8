"""The model-service process: bind, start the restore thread, serve with uvicorn, exit with a code.

Owns: the process lifecycle — the listening socket is bound *before* the restore starts (a port
conflict is a service fault, never blamed on a checkpoint), uvicorn runs the FastAPI app, and a
failed bring-up stops the server and becomes the process's exit code (the error's stable code).
Does not own behaviour (``runtime``) or routes (``app``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from appliance.errors import ServiceError
from appliance.node.config import NodeConfig
from appliance.service.app import create_app
from appliance.service.runtime import ServiceRuntime


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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


def serve(config: NodeConfig, started: float | None = None) -> int:
    """Run the service; ``started`` (monotonic) is when the process began, for the phase timings."""
    sock = bind(config.host, config.port)
    runtime = ServiceRuntime(config, started=started)
    app = create_app(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        yield

    app.router.lifespan_context = lifespan
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))

    def stop() -> None:
        server.should_exit = True

    runtime.stop_server = stop
    server.run(sockets=[sock])
    return runtime.exit_code or 0
