"""The model service's local control channel: who may call what, and the client boot and persist use.

Owns: the route table (which role each control route needs), ``Peer`` (the kernel's
``SO_PEERCRED`` of the other end of a unix socket), resolving node.json user names to uids,
and ``ControlClient`` — JSON over HTTP/1.1 on the unix socket ``RUN/control.sock``, which
refuses to talk to a socket whose owner is not the service's user. Does not own serving the
channel (``appliance.service.control``) or what the operations do.

Why a unix socket: the kernel tells the server who is calling (uid, gid, pid of the peer
process — not forgeable by the caller), and file permissions (0660, group ``appliance``) keep
everyone else from connecting at all. The network listener carries no state-changing route.

Roles (docs/design.md "Threat model"):

* ``boot`` — the pre-admission canary and admission: root, the service's own user, ``control_users``.
* ``persist`` — exports and their receipts, status: same set as ``boot``.
* ``adapt`` — online adaptation: root, the service's own user and ``adapt_users`` only (default none).
* ``metrics`` — Prometheus metrics (``GET /v1/metrics``): the ``boot`` set and ``metrics_users``
  (default ``appliance-console``); never on the network listener.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.errors import ControlChannelError, ControlDeniedError

ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/v1/canary"): "boot",
    ("POST", "/v1/admit"): "boot",
    ("GET", "/v1/status"): "persist",
    ("POST", "/v1/export"): "persist",
    ("GET", "/v1/receipt"): "persist",
    ("POST", "/v1/journal/checkpointed"): "persist",
    ("POST", "/v1/adapt"): "adapt",
    ("GET", "/v1/metrics"): "metrics",
}
SERVICE_USER = "appliance-serve"
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        """The credentials the kernel recorded for the other end of a connected unix socket."""
        pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
        return cls(pid, uid, gid)


def uids(names: Iterable[str]) -> frozenset[int]:
    """uids of the named local users; names that do not exist on this machine are skipped."""
    out = set()
    for name in names:
        try:
            out.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue
    return frozenset(out)


@dataclass(frozen=True)
class Policy:
    """Which uids hold which role; root and the service's own uid hold every role."""

    control: frozenset[int]
    adapt: frozenset[int]
    own: int
    metrics: frozenset[int] = frozenset()

    @classmethod
    def from_names(cls, control_users: Iterable[str], adapt_users: Iterable[str],
                   metrics_users: Iterable[str] = ()) -> Policy:  # fmt: skip
        return cls(uids(control_users), uids(adapt_users), os.geteuid(), uids(metrics_users))

    def allows(self, peer: Peer, role: str) -> bool:
        if peer.uid in (0, self.own):
            return True
        if role == "adapt":
            return peer.uid in self.adapt
        if role == "metrics":
            return peer.uid in self.control | self.metrics
        return peer.uid in self.control


def role_of(method: str, path: str) -> str | None:
    """The role a control route needs, ``None`` for a route that does not exist."""
    return ROUTES.get((method, path.split("?", 1)[0]))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Calls the service's control channel; checks the socket's server is the service's user."""

    def __init__(self, path: str, timeout: float = 60.0, servers: frozenset[int] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.servers = servers if servers is not None else frozenset({0, os.geteuid()}) | uids([SERVICE_USER])

    def call(self, method: str, route: str, body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        """``(status, parsed JSON)``; ``ControlChannelError`` if unreachable or the server is foreign."""
        conn = _UnixConnection(self.path, self.timeout if timeout is None else timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            server = Peer.of(conn.sock)
            if server.uid not in self.servers:
                raise ControlChannelError(f"{self.path} is served by uid {server.uid}, not by the model service")
            data = None if body is None else json.dumps(body, allow_nan=False).encode("utf-8")
            headers = {"Content-Type": "application/json", "Host": "localhost"}
            conn.request(method, route, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, _parse(raw)
        except (OSError, http.client.HTTPException) as exc:
            raise ControlChannelError(f"control channel {self.path}: {exc}") from exc
        finally:
            conn.close()

    def require(self, method: str, route: str, body: Any = None, timeout: float | None = None) -> Any:
        """The body of a 200 answer; ``ControlDeniedError`` on 403, ``ControlChannelError`` otherwise."""
        status, answer = self.call(method, route, body, timeout)
        if status == 403:
            raise ControlDeniedError(f"the control channel refused {method} {route}: {_detail(answer)}")
        if status != 200:
            raise ControlChannelError(f"{method} {route} answered HTTP {status}: {_detail(answer)}")
        return answer


def _detail(answer: Any) -> str:
    return str(answer.get("detail", answer) if isinstance(answer, dict) else answer)[:500]


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
