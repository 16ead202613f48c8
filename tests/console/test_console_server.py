"""The console as it runs on a node: uvicorn with TLS and its fingerprint, and under real supervisord."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from appliance.boot.supervisord_conf import SupervisordLayout, render
from tests.console.conftest import Node

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"console exited {proc.returncode}")
        time.sleep(0.2)
    raise RuntimeError("console did not start listening")


def test_tls_certificate_fingerprint_matches_what_the_cli_prints(node: Node) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "appliance.cli.main", "console", "serve", "--config", str(node.config_path),
           "--listen", f"127.0.0.1:{port}", "--tls"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed: pinned by fingerprint below
        with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
        assert der is not None
        served = hashlib.sha256(der).hexdigest().upper()
        printed = subprocess.run(
            [sys.executable, "-m", "appliance.cli.main", "console", "fingerprint", "--config", str(node.config_path),
             "--json"], capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        assert json.loads(printed)["fingerprint"].replace("SHA256:", "").replace(":", "") == served
        head = reply.split(b"\r\n\r\n", 1)[0].decode()
        assert "200 OK" in head and "Secure" in head and "HttpOnly" in head
        assert (node.state_dir / "tls" / "console.key").stat().st_mode & 0o777 == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2)  # stopped


@pytest.mark.skipif(shutil.which("supervisord") is None and not Path(sys.executable).with_name("supervisord").exists(),
                    reason="supervisord is not installed")  # fmt: skip
def test_console_runs_as_a_supervisord_program(node: Node, tmp_path: Path) -> None:
    port = free_port()
    root = node.config_path.parent
    layout = SupervisordLayout(
        config=str(node.config_path), appliance=f"{sys.executable} -m appliance.cli.main",
        socket=str(root / "run" / "sup.sock"), log_dir=str(root / "log"), pidfile=str(root / "run" / "sup.pid"),
        console=True, console_state=str(node.state_dir), console_listen=(f"127.0.0.1:{port}",),
    )  # fmt: skip
    conf = root / "supervisord-console.conf"
    conf.write_text(render(layout))
    assert f"--listen 127.0.0.1:{port}" in conf.read_text() and "[program:console]" in conf.read_text()
    supervisord = shutil.which("supervisord") or str(Path(sys.executable).with_name("supervisord"))
    sup = subprocess.Popen([supervisord, "-n", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, None, timeout=90)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10).read().decode()
        assert "Technician login" in body
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "appliance_slot_state" in metrics
    finally:
        sup.terminate()
        sup.wait(timeout=60)


def test_node_init_with_console_adds_the_supervised_program(tmp_path: Path) -> None:
    from appliance.cli.main import main

    assert main(["node-init", str(tmp_path / "n"), "--console", "127.0.0.1:18471"]) == 0
    conf = (tmp_path / "n" / "supervisord.conf").read_text()
    assert "[program:console]" in conf and "--listen 127.0.0.1:18471" in conf
    assert f"--state-dir {tmp_path / 'n' / 'console'}" in conf and "user=" not in conf.split("[program:console]")[1]
    plain = tmp_path / "plain"
    assert main(["node-init", str(plain)]) == 0
    assert "[program:console]" not in (plain / "supervisord.conf").read_text()


def test_production_supervisord_runs_the_console_as_appliance_console() -> None:
    from appliance.boot.supervisord_conf import production

    section = render(production()).split("[program:console]")[1]
    assert "user=appliance-console" in section and "--listen" not in section  # loopback default
