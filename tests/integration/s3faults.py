"""A fault-injection proxy in front of the real S3 server: 5xx, SlowDown, stalls, truncated bodies.

**A stand-in, only inside the fault-injection seam** (docs/DEVELOPERS "real parts, not mocks"):
every request is forwarded byte for byte (Host header included, so the client's SigV4 signature
still verifies) to the real ``rclone serve s3`` behind it, and every answer the client gets comes
from that server — except where a ``Fault`` rule matches, and then the proxy answers as a
failing S3 service would: ``500 InternalError``, ``503 SlowDown`` (S3's XML error bodies), a
stall before any byte of the answer (longer than the client's read timeout), or the real
answer's headers and half its body, then a stall and a closed connection (a connection that
dies mid-download). Nothing about the S3 protocol is imitated beyond these error answers.

Rules match on the HTTP method and a substring of the path (``"/blobs/"``, ``"head.json"``,
``"partNumber=3"``), let ``after`` matching requests through, then fire ``times`` times (``-1``:
until removed). ``seen`` records each request
(method, path, what the proxy did) so a test can assert that faults really happened.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.integration.s3server import S3Server, free_port

ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>fault-proxy</RequestId></Error>"
)
ACTIONS = ("500", "503", "stall", "truncate")


@dataclass
class Fault:
    action: str  # one of ACTIONS
    method: str = ""  # "" = any
    path: str = ""  # substring of the request path (with query); "" = any
    times: int = 1  # -1 = until removed
    stall: float = 3.0  # seconds a stall lasts (then the connection is closed)
    after: int = 0  # let this many matching requests through first
    fired: int = 0
    passed: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")

    def matches(self, method: str, path: str) -> bool:
        if (self.method and self.method != method) or self.path not in path:
            return False
        if self.passed < self.after:
            self.passed += 1
            return False
        return self.times < 0 or self.fired < self.times


@dataclass
class FaultProxy:
    upstream: S3Server
    port: int = field(default_factory=free_port)
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def fired(self, action: str | None = None) -> int:
        with self.lock:
            return sum(1 for _, _, did in self.seen if did != "forward" and (action is None or did == action))

    def pick(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.fired += 1
                    self.seen.append((method, path, fault.action))
                    return fault
            self.seen.append((method, path, "forward"))
            return None

    def wait(self, seconds: float) -> None:
        self.stopping.wait(seconds)


def _handler(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _forward(self) -> tuple[int, str, list[tuple[str, str]], bytes]:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream.port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() != "expect":  # answered here (100 Continue); not a signed header
                        conn.putheader(name, value)
                conn.endheaders(body or None)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.getheaders(), resp.read()
            finally:
                conn.close()

        def _error(self, status: int, code: str) -> None:
            body = ERROR_BODY.format(code=code, message="injected by the fault proxy").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            fault = proxy.pick(self.command, self.path)
            if fault is not None and fault.action in ("500", "503"):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self._error(500, "InternalError") if fault.action == "500" else self._error(503, "SlowDown")
                return
            if fault is not None and fault.action == "stall":
                proxy.wait(fault.stall)  # no answer at all, then the connection drops
                self.close_connection = True
                return
            status, reason, headers, body = self._forward()
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in ("connection", "transfer-encoding", "date", "server"):
                    self.send_header(name, value)
            if not any(n.lower() == "content-length" for n, _ in headers):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault is not None and fault.action == "truncate" and len(body) > 1:
                self.wfile.write(body[: len(body) // 2])  # half the object, then nothing, then a closed socket
                self.wfile.flush()
                proxy.wait(fault.stall)
                self.close_connection = True
                return
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

    return Handler


@contextmanager
def fault_proxy(upstream: S3Server) -> Iterator[FaultProxy]:
    """A running proxy on loopback in front of ``upstream``; stopped (stalls released) on exit."""
    proxy = FaultProxy(upstream)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", proxy.port), _handler(proxy))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="s3-fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        time.sleep(0)  # let handler threads see the stop event
