"""The control channel's server: state-changing operations on a unix socket, each caller checked by the kernel.

Owns: ``ControlServer`` — creating ``RUN/control.sock`` (stale socket removed; mode 0660, group
``appliance`` when that group exists, else 0600), a thread per connection, and for every
request: the caller's ``SO_PEERCRED`` against the route's role (``appliance.node.control_channel``),
a header/body deadline, the body cap, the same request models as the network listener, then
the runtime operation. A refusal is answered 403 and logged as a ``control.refused`` event (at
most one per caller uid and route per minute). Does not own what the operations do (``runtime``).

Routes (JSON over HTTP/1.1; ``curl --unix-socket RUN/control.sock http://localhost/v1/status``)::

    POST /v1/canary   boot     {"inputs"}: answered in phase "restored" (the pre-admission canary)
    POST /v1/admit    boot     {"boot_id"}: admit traffic after the canary passed
    GET  /v1/status   persist  the full health, with the handoff (boot id) the service restored
    POST /v1/export   persist  capture the state into the outbox -> receipt (file, content digest, source)
    GET  /v1/receipt?file=NAME persist  the receipt of an export this service process wrote, else 404
    POST /v1/journal/checkpointed persist {"slot", "generation"}: trim the journal up to what that
                      committed checkpoint covers (the service verifies the checkpoint itself)
    POST /v1/adapt    adapt    {"inputs", "targets"}: one online adaptation step
    GET  /v1/metrics  metrics  Prometheus text (appliance.service.metrics); never on the network listener
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from appliance.errors import ApplianceError, ServiceError
from appliance.node.control_channel import Peer, Policy, role_of
from appliance.node.unixsocket import bind_unix
from appliance.service.limits import request_models
from appliance.service.runtime import NotAvailableError, ServiceRuntime

GROUP = "appliance"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False


class ControlServer:
    def __init__(self, runtime: ServiceRuntime, path: str | None = None) -> None:
        self.runtime = runtime
        self.path = Path(path or runtime.config.control_socket)
        self.policy = Policy.from_names(runtime.config.control_users, runtime.config.adapt_users,
                                        runtime.config.metrics_users)  # fmt: skip
        self.models = request_models(runtime.config)
        self._refused: dict[tuple[int, str], float] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Create the socket (replacing a stale one) and serve it from a daemon thread."""
        try:  # bound privately, its mode set, then renamed into place: never connectable by others before
            server = bind_unix(self.path, lambda address: _Server(address, _handler(self)), _share_with_group)
        except OSError as exc:
            raise ServiceError(f"cannot create the control socket {self.path}: {exc.strerror or exc}") from exc
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._server = None

    def refused(self, peer: Peer, method: str, route: str, why: str) -> None:
        key, now = (peer.uid, route), time.monotonic()
        if now - self._refused.get(key, -1e9) < 60:
            return  # one event per caller and route per minute: a local flood cannot fill the log
        self._refused[key] = now
        self.runtime.events.emit(
            "control.refused", uid=peer.uid, gid=peer.gid, pid=peer.pid, route=f"{method} {route}", reason=why
        )

    # --- dispatch ----------------------------------------------------------------------

    def dispatch(self, method: str, route: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:  # noqa: PLR0911 (one return per route)
        rt = self.runtime
        if route == "/v1/status":
            return 200, rt.health()
        if route == "/v1/metrics":
            return 200, rt.metrics.render()  # bytes: sent as Prometheus text
        if route == "/v1/receipt":
            receipt = rt.receipt((query.get("file") or [""])[0])
            return (200, receipt) if receipt else (404, {"detail": "this service process wrote no such export"})
        if route == "/v1/export":
            return 200, rt.export()
        if route == "/v1/admit":
            rt.admit(self._parse(self.models.admission, body).boot_id)
            return 200, rt.health()
        if route == "/v1/canary":
            inputs = self._parse(self.models.batch, body).inputs
            return 200, _answer(rt, rt.canary(inputs))
        if route == "/v1/journal/checkpointed":
            req = json.loads(body or b"{}")
            slot, generation = req.get("slot"), req.get("generation")
            if not isinstance(slot, str) or not isinstance(generation, int) or isinstance(generation, bool):
                return 422, {"detail": "give the committed checkpoint's slot (string) and generation (integer)"}
            return 200, rt.journal_checkpointed(slot, generation)
        if route == "/v1/adapt":
            req = self._parse(self.models.adaptation, body)
            return 200, rt.adapt(req.inputs, req.targets)
        return 404, {"detail": f"no route {method} {route}"}

    @staticmethod
    def _parse(model: Any, body: bytes) -> Any:
        return model.model_validate_json(body or b"{}")


def _answer(runtime: ServiceRuntime, outputs: list[Any]) -> dict[str, Any]:
    opened = runtime.restored.opened if runtime.restored else None
    return {"outputs": outputs, "slot": opened.slot if opened else None,
            "generation": opened.generation if opened else None}  # fmt: skip


def _share_with_group(path: Path) -> None:
    """0660 group ``appliance`` when the group exists (boot and persist are in it), else owner only."""
    try:
        gid = grp.getgrnam(GROUP).gr_gid
        os.chown(path, -1, gid)
        path.chmod(0o660)
    except (KeyError, PermissionError):
        path.chmod(0o600)


def _handler(control: ControlServer) -> type[BaseHTTPRequestHandler]:
    config = control.runtime.config

    class Handler(BaseHTTPRequestHandler):
        timeout = config.header_timeout  # the whole request (headers and body) must arrive within this
        server_version = "appliance-control"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            return  # refusals become events; success is not worth a line per request

        def address_string(self) -> str:
            return "unix"

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            route, query = parts.path, parse_qs(parts.query)
            peer = Peer.of(self.connection)
            role = role_of(method, route)
            if role is None:
                self._send(404, {"detail": f"no route {method} {route}"})
                return
            if not control.policy.allows(peer, role):
                control.refused(peer, method, route, f"uid {peer.uid} does not hold the {role} role")
                self._send(403, {"detail": f"uid {peer.uid} may not call {method} {route} (role {role})"})
                return
            body = self._body()
            if body is None:
                return
            try:
                status, answer = control.dispatch(method, route, query, body)
            except NotAvailableError as exc:
                status, answer = exc.status, {"detail": str(exc), "phase": control.runtime.phase.value}
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_context=False, include_input=False)[:5]
                status, answer = 422, {"detail": errors}
            except ApplianceError as exc:
                status, answer = 400, exc.to_dict()
            except (RuntimeError, ValueError, TypeError) as exc:
                status, answer = 422, {"detail": f"the model cannot take this input: {exc}"}
            self._send(status, answer)

        def _body(self) -> bytes | None:
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > config.max_body_bytes:
                self._send(413, {"detail": f"request body larger than max_body_bytes ({config.max_body_bytes})"})
                return None
            return self.rfile.read(int(length))

        def _send(self, status: int, answer: Any) -> None:
            text = isinstance(answer, bytes)  # Prometheus text (GET /v1/metrics)
            data = answer if text else json.dumps(answer, default=str, allow_nan=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", METRICS_TYPE if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
