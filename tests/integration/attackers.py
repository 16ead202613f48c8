"""The attackers of docs/design.md's threat model, as real processes: a remote peer and a local unprivileged user.

``raw_http`` speaks HTTP/1.1 over TCP or a unix socket byte for byte (no client library that would
refuse NaN or fix up a Host header). ``Intruder`` is a real local user made with ``useradd`` who
runs stdlib-only Python as itself (``subprocess`` ``user=``), optionally with the ``appliance``
group as a supplementary group — the kernel, not the test, decides what it may reach.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.node.config import load_config

INTRUDER = "appliance-intruder"
GROUP = "appliance"
SYSTEM_PYTHON = "/usr/bin/python3"


def raw_http(target: str | tuple[str, int], request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` as is; ``(status, body)`` of the answer (status 0: closed without one)."""
    family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(target)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(request)  # the server may answer and close before reading everything we send
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


def post(path: str, body: bytes, host: str = "localhost", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    ).encode() + body


def get(path: str, host: str = "localhost") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def configure(node: LocalNode, **fields: object) -> LocalNode:
    """Set node.json fields the node-init command has no flag for; the node re-reads its config."""
    path = node.config_path
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))
    node.config = load_config(path)
    return node


@dataclass(frozen=True)
class Intruder:
    name: str
    uid: int

    def run(self, code: str, *, in_group: bool = False, timeout: float = 60.0) -> str:
        """Run stdlib Python ``code`` as this user; its stdout (stripped)."""
        done = subprocess.run(
            [SYSTEM_PYTHON, "-I", "-c", code],
            user=self.uid,
            group=pwd.getpwuid(self.uid).pw_gid,
            extra_groups=[GROUP] if in_group else [],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def request_unix(self, path: str, request: bytes, *, in_group: bool = False) -> str:
        """``HTTP <status>`` of ``request`` sent to unix socket ``path``, or the errno name of the failure."""
        code = f"""
import errno, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect({path!r})
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
    raise SystemExit(0)
s.sendall({request!r})
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print("HTTP", data.split(b" ", 2)[1].decode())
"""
        return self.run(code, in_group=in_group)


def ensure_group() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True, capture_output=True)
        return grp.getgrnam(GROUP).gr_gid


@pytest.fixture(scope="session")
def intruder() -> Intruder:
    """A real unprivileged local user (``useradd``); skipped without root, which CI has."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a real unprivileged user (CI runs as root)")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"the intruder runs {SYSTEM_PYTHON} (a system interpreter it may execute); not installed")
    ensure_group()
    try:
        entry = pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(INTRUDER)
    return Intruder(INTRUDER, entry.pw_uid)


def open_path_for_others(path: Path) -> None:
    """chmod o+x on ``path`` and its parents up to /tmp, so the intruder meets the socket's own permissions."""
    for p in [path, *path.parents]:
        if p == Path("/tmp") or p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o005)
