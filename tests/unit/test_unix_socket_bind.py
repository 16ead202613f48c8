"""Binding the node's unix sockets: never through the process-wide umask, never connectable before its mode."""

from __future__ import annotations

import os
import socket
import socketserver
import stat
from pathlib import Path

import pytest

from appliance.node.unixsocket import bind_unix

pytestmark = pytest.mark.unit


class _Server(socketserver.UnixStreamServer):
    pass


def test_a_socket_is_bound_without_touching_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an ``os.umask(0o177)`` around bind is process-wide; a thread writing an export in that
    moment made it 0600, unreadable to the persistence watchdog (VM tier)."""

    def forbidden(_: int) -> int:
        raise AssertionError("the process umask was changed")

    monkeypatch.setattr(os, "umask", forbidden)
    seen: list[int] = []

    def share(bound: Path) -> None:
        seen.append(stat.S_IMODE(bound.parent.stat().st_mode))  # still in its private directory
        bound.chmod(0o660)

    path = tmp_path / "control.sock"
    server = bind_unix(path, lambda address: _Server(address, socketserver.BaseRequestHandler), share)
    try:
        assert seen == [0o700] and stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o660
        assert [p.name for p in tmp_path.iterdir()] == ["control.sock"]  # the private directory is gone
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        server.server_close()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    first = bind_unix(path, lambda a: _Server(a, socketserver.BaseRequestHandler), lambda p: p.chmod(0o600))
    first.server_close()
    second = bind_unix(path, lambda a: _Server(a, socketserver.BaseRequestHandler), lambda p: p.chmod(0o600))
    second.server_close()
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_a_socket_whose_final_path_fits_af_unix_binds_through_the_private_directory(tmp_path: Path) -> None:
    """Regression (CI): the private directory lengthened the bound path past AF_UNIX's 108 bytes."""
    base = tmp_path / ("d" * max(1, 107 - len(str(tmp_path)) - len("/control.sock") - 1))
    base.mkdir()
    path = base / "control.sock"
    assert len(str(path)) <= 107
    server = bind_unix(path, lambda a: _Server(a, socketserver.BaseRequestHandler), lambda p: p.chmod(0o600))
    server.server_close()
    assert stat.S_ISSOCK(path.lstat().st_mode)
