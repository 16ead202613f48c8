"""Running the console: one uvicorn server per listen address, TLS on every non-loopback one.

Owns: ``serve`` — builds the Host allowlist from the listen addresses (plus ``--allow-host``
names), creates the per-device certificate when any address needs TLS (plain HTTP only on
loopback: ``appliance.format.console.needs_tls``), writes ``console.started`` and runs the
servers with bounded header size, keep-alive and concurrency. Does not own the routes
(``app``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from appliance.console import tls
from appliance.console.actions import ActionChannel, CliChannel
from appliance.console.app import ConsoleSettings, create_app
from appliance.events import EventLog
from appliance.format import console as rules
from appliance.node.config import load_config

LIMIT_CONCURRENCY = 32


def allowed_hosts(listen: Sequence[tuple[str, int]], extra: Sequence[str]) -> tuple[str, ...]:
    names = {"localhost", "127.0.0.1", "::1", *extra}
    for host, _ in listen:
        if host not in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard is not a Host name
            names.add(host)
    if any(h in ("0.0.0.0", "::") for h, _ in listen):  # noqa: S104
        names.add(socket.gethostname())
    return tuple(sorted(names))


def channel_for(config_path: Path, actions: str) -> ActionChannel:
    """The privileged sides' sockets in production (``socket``, or ``auto`` when ``RUN/actions.sock`` exists),
    else child processes of the console's own user (a development node without users)."""
    from appliance.console.actiond import SocketChannel, socket_path

    use_socket = actions == "socket" or (
        actions == "auto" and socket_path(load_config(config_path), "persist").exists()
    )
    return SocketChannel(config_path) if use_socket else CliChannel(config_path)


def serve(config_path: Path, state_dir: Path, listen: Sequence[tuple[str, int]], extra_hosts: Sequence[str], *,
          force_tls: bool = False, remote: Path | None = None, actions: str = "auto") -> int:  # fmt: skip
    hosts = allowed_hosts(listen, extra_hosts)

    def tls_on(host: str) -> bool:
        return force_tls or rules.needs_tls(host)

    secure = any(tls_on(h) for h, _ in listen)
    cert = key = None
    if secure:
        cert = tls.ensure_certificate(state_dir, hosts)
        key = tls.cert_paths(state_dir)[1]
    provisioned = config_path.parent / "technicians.json"
    settings = ConsoleSettings(config_path=config_path, state_dir=state_dir, allowed_hosts=hosts, tls=secure,
                               provisioned_technicians=provisioned, remote=remote)  # fmt: skip
    app = create_app(settings, channel_for(config_path, actions))
    configs = []
    for host, port in listen:
        use_tls = tls_on(host)
        configs.append(uvicorn.Config(
            app, host=host, port=port, log_level="warning", proxy_headers=False, server_header=False,
            date_header=False, timeout_keep_alive=5, limit_concurrency=LIMIT_CONCURRENCY,
            h11_max_incomplete_event_size=16 * 1024,
            ssl_certfile=str(cert) if use_tls and cert else None, ssl_keyfile=str(key) if use_tls and key else None,
        ))  # fmt: skip
    listening = ", ".join(f"{'https' if tls_on(h) else 'http'}://{h}:{p}" for h, p in listen)
    EventLog(load_config(config_path).event_log, "console").emit("console.started", listen=listening)

    async def main() -> None:
        await asyncio.gather(*(uvicorn.Server(c).serve() for c in configs))

    asyncio.run(main())
    return 0
