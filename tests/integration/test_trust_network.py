"""The remote network peer (docs/design.md threat model): what it can and cannot do to a serving node.

One real node (real supervisord, the real service on loopback) serves every test of this module;
each attack is sent byte for byte (``attackers.raw_http``), so no client library softens it.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.node.rundir import RunDir
from tests.integration.attackers import configure, get, post, raw_http, rss_bytes
from tests.integration.boot_harness import ENV

pytestmark = [pytest.mark.integration, pytest.mark.faults]
X = b'{"inputs": [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]}'
HEADER_TIMEOUT = 2.0
MAX_CONNECTIONS = 16
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[LocalNode, str]]:
    base = Path(tempfile.mkdtemp(prefix="ap-", dir="/tmp"))
    node = LocalNode.create(base / "n", env=ENV, persist_interval=3600, ready_timeout=90, frame_size=256 * 1024)
    configure(node, header_timeout=HEADER_TIMEOUT, max_connections=MAX_CONNECTIONS, max_body_bytes=MAX_BODY,
              max_batch=64)  # fmt: skip
    try:
        node.seed()
        node.start()
        code, outcome = node.boot()
        assert code == 0, outcome
        yield node, outcome["boot_id"]
    finally:
        node.power_cut()
        shutil.rmtree(base, ignore_errors=True)


def addr(node: LocalNode) -> tuple[str, int]:
    return node.config.host, node.config.port


def service_pid(node: LocalNode) -> int:
    report = RunDir(node.config.run_dir).read_report()
    assert report is not None
    return report.pid


def test_dns_rebinding_host_is_refused(served: tuple[LocalNode, str]) -> None:
    """A page that rebinds evil.example to 127.0.0.1 sends Host: evil.example — refused before any route."""
    node, _ = served
    assert raw_http(addr(node), get("/health", host="evil.example"))[0] == 400
    assert raw_http(addr(node), post("/v1/infer", X, host=f"evil.example:{node.config.port}"))[0] == 400
    assert raw_http(addr(node), post("/v1/infer", X, host=f"localhost:{node.config.port}"))[0] == 200
    assert raw_http(addr(node), get("/health", host="127.0.0.1"))[0] == 200


def test_network_peer_cannot_adapt_export_admit_or_read_docs(served: tuple[LocalNode, str]) -> None:
    """No state-changing or boot-control route exists on the network listener, and no OpenAPI document."""
    node, _ = served
    for path in ("/v1/adapt", "/v1/export", "/v1/admit", "/v1/canary"):
        status, _ = raw_http(addr(node), post(path, b'{"inputs": [[0.0]], "targets": [[0.0]], "boot_id": "x"}'))
        assert status in (404, 405), path
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert raw_http(addr(node), get(path))[0] == 404, path
    assert node.events("persist.committed")[-1]["fields"]["generation"] == 1  # nothing was exported


def test_health_never_reveals_the_boot_id(served: tuple[LocalNode, str]) -> None:
    """/health and /ready say phase and checkpoint, never the boot id admission would need, nor a pid."""
    node, boot_id = served
    for path in ("/health", "/ready"):
        status, body = raw_http(addr(node), get(path))
        assert status == 200 and b'"serving"' in body
        assert boot_id.encode() not in body and b"handoff" not in body and b"pid" not in body


def test_oversized_body_is_refused_without_memory_growth(served: tuple[LocalNode, str]) -> None:
    """50 MB bodies (announced, or streamed chunked) are answered 413; the service's RSS does not grow."""
    node, _ = served
    pid = service_pid(node)
    raw_http(addr(node), post("/v1/infer", X))  # warm up the path before measuring
    before = rss_bytes(pid)
    big = b"[" + b"0.5," * (50 * 1024 * 1024 // 4) + b"0.5]"
    for _ in range(3):
        assert raw_http(addr(node), post("/v1/infer", b'{"inputs": [' + big + b"]}"), timeout=60)[0] == 413
    chunk = b"[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]," * 1024
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(50 * 1024 * 1024 // len(chunk)))
    head = b"POST /v1/infer HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    assert raw_http(addr(node), head + b'c\r\n{"inputs": [\r\n' + chunked, timeout=60)[0] == 413
    grown = rss_bytes(pid) - before
    assert grown < 32 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"
    assert raw_http(addr(node), post("/v1/infer", X))[0] == 200


def test_nan_target_is_refused(served: tuple[LocalNode, str]) -> None:
    """NaN, ±Infinity and numbers that overflow to Infinity are refused (422) on every route that takes numbers."""
    node, _ = served
    for bad in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"inputs": [[' + b"0.5, " * 15 + bad + b"]]}"
        assert raw_http(addr(node), post("/v1/infer", body))[0] == 422, bad
        adapt = b'{"inputs": [[' + b"0.5, " * 15 + b'0.5]], "targets": [[0.0, 0.0, 0.0, ' + bad + b"]]}"
        assert raw_http(node.config.control_socket, post("/v1/adapt", adapt))[0] == 422, bad
    status, body = raw_http(addr(node), post("/v1/infer", X))
    assert status == 200 and b"NaN" not in body and b"Infinity" not in body


def test_batch_over_the_cap_is_refused(served: tuple[LocalNode, str]) -> None:
    """More rows than max_batch, or a row longer than max_row, is refused before the model runs."""
    node, _ = served
    row = b"[" + b"0.5," * 15 + b"0.5]"
    assert raw_http(addr(node), post("/v1/infer", b'{"inputs": [' + b",".join([row] * 65) + b"]}"))[0] == 422
    assert raw_http(addr(node), post("/v1/infer", b'{"inputs": [' + b",".join([row] * 64) + b"]}"))[0] == 200


def test_slowloris_connections_are_capped(served: tuple[LocalNode, str]) -> None:
    """Connections over max_connections are closed at once; trickling headers are cut at header_timeout."""
    node, _ = served
    log = Path(node.root) / "log" / f"{node.config.service_program}.log"
    log_before = log.stat().st_size if log.exists() else 0
    slow: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS * 3):
            s = socket.create_connection(addr(node), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # never finished
            slow.append(s)
        time.sleep(0.5)
        held = [s for s in slow if _still_open(s)]
        assert len(held) <= MAX_CONNECTIONS
        time.sleep(HEADER_TIMEOUT + 1.5)
        for s in slow:
            s.sendall(b"X-Slow: 1\r\n") if _still_open(s) else None
        assert not [s for s in slow if _still_open(s)], "a slow client outlived header_timeout"
    finally:
        for s in slow:
            s.close()
    assert raw_http(addr(node), get("/health"))[0] == 200
    grown = (log.stat().st_size if log.exists() else 0) - log_before
    assert grown < 64 * 1024, f"the service log grew by {grown} bytes"


def _still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return True  # nothing to read: the server still holds it open
    except (ConnectionResetError, OSError):
        return False
    finally:
        s.setblocking(True)
    return not (data == b"" or data.startswith(b"HTTP/1.1 503"))


def _control_get(node: LocalNode, route: str) -> tuple[int, str]:
    from appliance.node.control_channel import _UnixConnection

    conn = _UnixConnection(node.config.control_socket, 10.0)
    try:
        conn.request("GET", route, headers={"Host": "localhost"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_metrics_are_served_on_the_control_channel_never_on_the_network(served: tuple[LocalNode, str]) -> None:
    """A remote peer learns no request volumes, phase or timings: /metrics is not a network route (design §7.1.1)."""
    node, _ = served
    assert raw_http(addr(node), get("/metrics"))[0] == 404
    assert raw_http(addr(node), post("/v1/infer", X))[0] == 200
    assert raw_http(addr(node), get("/health", host="evil.example"))[0] == 400
    status, text = _control_get(node, "/v1/metrics")
    assert status == 200, text
    assert 'appliance_service_requests_total{route="/v1/infer",status="200"}' in text
    assert 'appliance_service_requests_total{route="other",status="404"}' in text  # /metrics: no label growth
    assert 'appliance_service_requests_total{route="/health",status="400"}' in text  # refusals are counted
    assert 'appliance_service_phase{phase="serving"} 1.0' in text
    assert "appliance_service_generation 1.0" in text and 'appliance_service_restore_seconds{stage="total"}' in text
