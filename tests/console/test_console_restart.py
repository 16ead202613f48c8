"""Lockouts and sessions survive a console restart (a real process, stopped and started again).

Attack stopped: a technician name being guessed is locked out; restarting the console (a crash,
or an attacker who can make it crash) must not unlock it. And a restart does not log a working
technician out. The state file keeps no usable secret: session ids are stored hashed, CSRF
tokens are derived, the file is 0600.
"""

from __future__ import annotations

import http.cookiejar
import re
import sqlite3
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from appliance.format import console as rules
from tests.console.conftest import PASSWORD, TECH, Node
from tests.console.test_console_server import free_port, wait_listening

pytestmark = pytest.mark.integration


@contextmanager
def console(node: Node, port: int) -> Iterator[str]:
    cmd = [sys.executable, "-m", "appliance.cli.main", "console", "serve", "--config", str(node.config_path),
           "--state-dir", str(node.state_dir), "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.last_location: str | None = None  # Location of the last redirect answered to a POST

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: object, **k: object) -> None:
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"Origin": self.base})
        try:
            with self.opener.open(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            self.last_location = e.headers.get("Location")
            return e.code, e.read().decode()

    def login(self, name: str, password: str) -> int:
        _, page = self.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token, page[:500]
        status, _ = self.post("/login", {"csrf": token.group(1), "name": name, "password": password})
        return status


def test_lockout_and_session_survive_a_console_restart(node: Node) -> None:
    port = free_port()
    with console(node, port) as base:
        worker, guesser = Browser(base), Browser(base)
        assert worker.login(TECH, PASSWORD) == 303
        assert worker.get("/")[0] == 200
        for _ in range(rules.LockoutPolicy().max_failures):
            assert guesser.login(TECH, "wrong password!!") == 401
        assert guesser.login(TECH, PASSWORD) == 429
    with console(node, port) as base:  # a new process: nothing carried over in memory
        worker.base = guesser.base = base
        status, page = worker.get("/")
        assert status == 200 and "Overview" in page, "the restart logged the technician out"
        assert guesser.login(TECH, PASSWORD) == 429, "the restart unlocked a locked-out name"
        assert Browser(base).login(TECH, PASSWORD) == 429  # the name itself stays locked, from any client


def test_console_state_file_holds_no_session_id_or_token_in_clear(node: Node) -> None:
    port = free_port()
    with console(node, port) as base:
        b = Browser(base)
        assert b.login(TECH, PASSWORD) == 303
        (cookie,) = [c.value for c in b.jar if c.name == "appliance_console"]
        _, page = b.get("/")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token
    path = node.state_dir / "console.sqlite"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in node.state_dir.glob("console.sqlite-*"))
    assert cookie.encode() not in raw and token.group(1).encode() not in raw
    with sqlite3.connect(path) as db:
        technicians = [r[0] for r in db.execute("SELECT technician FROM sessions")]
    assert TECH in technicians
