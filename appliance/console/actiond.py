"""The console's privileged side: technician actions served on unix sockets by the user that holds the privilege.

Owns: ``ActionServer`` (``appliance console actiond --backend persist|boot``), ``SocketChannel``
(the console's ``ActionChannel`` over those sockets) and the socket plumbing both this and the
USB helper (``usbmount``) use. The web console runs as ``appliance-console``: it cannot read
the device key (rollback re-signs), write the store (import, scrub, slot marks) or reach
supervisord (restart). So it asks:

* ``RUN/actions.sock`` — served as ``appliance-persist`` (holds the device key, owns the
  store): verify, scrub, slot-reset, rollback, diagnostics-usb, usb-scan, import;
* ``RUN/boot-actions.sock`` — served as ``appliance-boot`` (reaches supervisord, owns the boot
  lock and the floor): restart-service (also the restart after a rollback);
* ``RUN/usbmount.sock`` — the root USB mount helper, asked by the persist side (``usbmount``).

For every connection the kernel says who is calling (``SO_PEERCRED``, not forgeable); only
root and ``console_users`` (default ``appliance-console``) are served. The request is one
JSON line parsed strictly (``appliance.format.actions``: a known action of this side, exact
fields, every argument checked against its grammar), rate-limited per caller uid, written to
the event log (``console.action_request`` with the technician, uid and pid, or
``console.action_refused``), then carried out by ``appliance tech ACTION`` as a child of the
server (its own user: the same verb a technician types as root over SSH; it writes
``console.action``). Progress and the result come back as JSON lines. The client checks that
the socket's server is root or the expected user (a socket planted by someone else is
refused, ``ActionChannelError`` 86). The diagnostics download needs no privilege (event log
and store are group-readable): the console builds it itself, as its own user.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from appliance.console.actions import ActionResult, CliChannel, Progress
from appliance.errors import ActionChannelError, ActionDeniedError, ActionRateLimitedError, ApplianceError
from appliance.events import EventLog
from appliance.format import actions as rules
from appliance.node.config import NodeConfig, load_config
from appliance.node.control_channel import Peer, uids
from appliance.node.unixsocket import bind_unix

GROUP = "appliance"
SOCKETS = {"persist": "actions.sock", "boot": "boot-actions.sock", "mount": "usbmount.sock"}
SERVER_USERS = {"persist": "appliance-persist", "boot": "appliance-boot", "mount": "root"}
READ_TIMEOUT_S = 10.0


def socket_path(config: NodeConfig, backend: str) -> Path:
    return Path(config.run_dir) / SOCKETS[backend]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def bind(path: Path, handler: Callable[[socket.socket], None]) -> _Server:
    """A unix socket at ``path`` (stale one replaced), 0660 group ``appliance`` (0600 without the group)."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            handler(self.request)

    def share(bound: Path) -> None:
        try:
            os.chown(bound, -1, grp.getgrnam(GROUP).gr_gid)
            bound.chmod(0o660)
        except (KeyError, PermissionError):
            bound.chmod(0o600)  # a development machine without the group: owner only

    try:  # bound privately, its mode set, then renamed into place (never a process-wide umask)
        return bind_unix(path, lambda address: _Server(address, Handler), share)
    except OSError as exc:
        raise ActionChannelError(f"cannot create {path}: {exc.strerror or exc}") from exc


def read_line(conn: socket.socket, limit: int = rules.MAX_REQUEST_BYTES, timeout: float = READ_TIMEOUT_S) -> bytes:
    """One line from ``conn`` (servers: a request within ``READ_TIMEOUT_S``; clients pass their own timeout)."""
    return read_line_fds(conn, limit, timeout, max_fds=0)[0]


def read_line_fds(conn: socket.socket, limit: int, timeout: float, max_fds: int = 1) -> tuple[bytes, list[int]]:
    """One line and the descriptors sent with it (``SCM_RIGHTS``; at most ``max_fds``, the rest closed)."""
    conn.settimeout(timeout)
    data, fds = b"", []
    while b"\n" not in data and len(data) <= limit:
        if max_fds:
            chunk, got, _, _ = socket.recv_fds(conn, 4096, 4)
            fds += got
        else:
            chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    for extra in fds[max_fds:]:
        os.close(extra)
    return data.split(b"\n", 1)[0], fds[:max_fds]


def send(conn: socket.socket, obj: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One JSON line; ``fds`` travel with its first bytes (``SCM_RIGHTS``)."""
    data = json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"
    if fds:
        data = data[socket.send_fds(conn, [data], list(fds)) :]
    conn.sendall(data)


def refusal(exc: ApplianceError) -> dict[str, Any]:
    return {"exit_code": exc.exit_code, "error": {"problem": exc.problem, "remedy": exc.remedy}}


class ActionServer:
    """One side (``persist`` or ``boot``) of the privileged action channel."""

    def __init__(self, config_path: Path, backend: str, *, allowed: Iterable[int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if backend not in rules.BACKENDS:
            raise ActionChannelError(f"unknown action backend {backend!r:.20}")
        self.config_path = config_path
        self.config = load_config(config_path)
        self.backend = backend
        self.allowed = frozenset(allowed) if allowed is not None else frozenset({0}) | uids(self.config.console_users)
        self.floor_readers = self.allowed | uids([SERVER_USERS["persist"]])  # persist checks rollbacks against it
        self.clock = clock
        self.events = EventLog(self.config.event_log, f"actions-{backend}")
        self.limit = rules.RateLimit()
        self._lock = threading.Lock()

    def serve_forever(self) -> None:
        server = bind(socket_path(self.config, self.backend), self.handle)
        with server:
            server.serve_forever()

    def handle(self, conn: socket.socket) -> None:
        peer = Peer.of(conn)
        try:
            request = self._admit(conn, peer)
        except ActionDeniedError as exc:
            self.events.emit("console.action_refused", backend=self.backend, uid=peer.uid, pid=peer.pid,
                             reason=exc.problem)  # fmt: skip
            with contextlib.suppress(OSError):
                send(conn, refusal(exc))
            return
        if request.action in rules.QUIET:
            with contextlib.suppress(OSError):
                send(conn, self.query(request))
            return
        self.events.emit("console.action_request", backend=self.backend, action=request.action,
                         args=list(request.args), technician=request.technician, uid=peer.uid,
                         pid=peer.pid)  # fmt: skip

        def progress(done: int, total: int) -> None:
            with contextlib.suppress(OSError):
                send(conn, {"progress": {"done": done, "total": total}})

        result = self.run(request, progress)
        with contextlib.suppress(OSError):
            send(conn, {"exit_code": result.exit_code, "data": result.data, "error": result.error})

    def _admit(self, conn: socket.socket, peer: Peer) -> rules.ActionRequest:
        if peer.uid not in self.allowed | (self.floor_readers if self.backend == "boot" else frozenset()):
            raise ActionDeniedError(f"uid {peer.uid} may not ask for technician actions")
        request = rules.parse_request(read_line(conn), self.backend)
        if peer.uid not in self.allowed and request.action != "floor":
            raise ActionDeniedError(f"uid {peer.uid} may only read the floor here, not run {request.action}")
        with self._lock:
            self.limit, ok = self.limit.take(peer.uid, self.clock(), rules.cost_of(request.action))
        if not ok:
            raise ActionRateLimitedError(f"uid {peer.uid} asked for too many actions; {request.action} refused")
        return request

    def query(self, request: rules.ActionRequest) -> dict[str, Any]:
        """A read-only query answered in this process (``floor``)."""
        from appliance.node.floor import FloorUnreadableError, open_floor

        try:
            return {"exit_code": 0, "data": {"floor": open_floor(self.config).read()}, "error": None}
        except FloorUnreadableError as exc:
            return {"exit_code": 83, "data": {}, "error": {"problem": f"the floor is unreadable: {exc}"}}

    def run(self, request: rules.ActionRequest, progress: Progress) -> ActionResult:
        """Carry the request out as ``appliance tech`` in a child process of this (privileged) user."""
        a = request.args
        args: dict[str, Sequence[str]] = {
            "scrub": ["--max-duration", *a],
            "rollback": [*a, "--no-restart"],  # the restart is the boot side's (SocketChannel asks it)
            "import": [*a, "--progress-json"],
        }
        return CliChannel(self.config_path).run(request.action, args.get(request.action, a), request.technician,
                                                progress)  # fmt: skip


def check_server(sock: socket.socket, backend: str, path: Path) -> None:
    """The socket must be served by root or the side's own user (not a socket someone planted)."""
    server = Peer.of(sock)
    expected = {0, os.geteuid()} | set(uids([SERVER_USERS[backend]]))
    if server.uid not in expected:
        name = _name(server.uid)
        raise ActionChannelError(f"{path} is served by uid {server.uid} ({name}), not by the {backend} side")


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "unknown user"


def connect(path: Path, backend: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        check_server(sock, backend, path)
    except OSError as exc:
        sock.close()
        raise ActionChannelError(f"the {backend} side ({path}) is not reachable: {exc.strerror or exc}") from exc
    except ActionChannelError:
        sock.close()
        raise
    return sock


class SocketChannel:
    """The console's ``ActionChannel`` in production: each action goes to the side that holds its privilege."""

    def __init__(self, config_path: Path, timeout: float = 3600.0) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.timeout = timeout

    def run(self, action: str, args: Sequence[str], technician: str, progress: Progress | None = None) -> ActionResult:
        args = list(args)
        if action == "scrub":
            args = [a for a in args if a != "--max-duration"]
        if action == "import":
            args = [a for a in args if a != "--progress-json"]
        if action in ("diagnostics", "usb-list"):  # unprivileged: the console's own user does it
            return CliChannel(self.config_path, self.timeout).run(action, args, technician, progress)
        if action not in rules.ACTIONS:
            return ActionResult(84, error={"problem": f"{action} is not a privileged action"})
        result = self.call(rules.ActionRequest(action, tuple(args), technician), progress)
        if action == "rollback" and result.ok:
            restart = self.call(rules.ActionRequest("restart-service", (), technician), None)
            data = dict(result.data)
            data["restart"] = restart.data if restart.ok else {"restarted": False, **(restart.error or {})}
            data["summary"] = f"{data.get('summary', '')}; {data['restart'].get('summary') or 'restart failed'}"
            result = ActionResult(result.exit_code, data)
        return result

    def call(self, request: rules.ActionRequest, progress: Progress | None) -> ActionResult:
        return ask(self.config, request, progress, self.timeout)


def ask(config: NodeConfig, request: rules.ActionRequest, progress: Progress | None = None,
        timeout: float = 3600.0) -> ActionResult:  # fmt: skip
    """Send ``request`` to the side that serves it; progress lines go to ``progress``; the final answer."""
    path = socket_path(config, request.backend)
    try:
        sock = connect(path, request.backend, timeout)
    except ActionChannelError as exc:
        return ActionResult(exc.exit_code, error={"problem": exc.problem, "remedy": exc.remedy})
    with sock:
        sock.sendall(request.to_line())
        for line in sock.makefile("rb"):
            msg = json.loads(line)
            if "progress" in msg:
                if progress is not None:
                    progress(int(msg["progress"]["done"]), int(msg["progress"]["total"]))
                continue
            return ActionResult(int(msg["exit_code"]), msg.get("data") or {}, msg.get("error"))
    problem = f"the {request.backend} side closed the connection without an answer"
    return ActionResult(ActionChannelError.exit_code, error={"problem": problem})


def read_floor(config: NodeConfig) -> int | None:
    """The anti-rollback floor: read directly (boot, root), else asked of the boot side (the floor file is
    boot's alone, 0600); ``None`` when neither works."""
    from appliance.node.floor import FloorUnreadableError, open_floor

    try:
        return open_floor(config).read()
    except (FloorUnreadableError, OSError):
        if os.geteuid() == 0 or not socket_path(config, "boot").exists():
            return None
    answer = ask(config, rules.ActionRequest("floor", (), "system"), timeout=30.0)
    floor = answer.data.get("floor") if answer.exit_code == 0 else None
    return floor if isinstance(floor, int) else None
