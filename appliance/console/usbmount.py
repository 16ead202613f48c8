"""The root USB mount helper: the only privileged step of a USB import or a diagnostics write, and nothing else.

Owns: ``MountServer`` (``appliance console usbmount --config NODE.json``, run as root by
supervisord; socket ``RUN/usbmount.sock``, 0660 group ``appliance``) and ``MountClient``.
Callers: root and the persistence side's user (``appliance-persist``) only (``SO_PEERCRED``).
Requests (``appliance.format.actions.parse_mount``): ``mount DEVICE [write]`` and
``unmount PATH``. Argument validation is strict: the device must be a ``/dev/`` node that udev
reports *now* as a USB block device with a known file system (``usb.find_stick``) and whose
medium carries that file system (``blkid -p``); the helper chooses the mount point itself —
``BASE/appliance-usb-XXXX/m`` in a root-owned 0700 directory — and mounts
``nosuid,nodev,noexec``, read-only unless ``write`` (the explicit diagnostics action), with
FAT/exFAT files owned by the caller. The caller gets the mount's root as a file descriptor
(``SCM_RIGHTS``, an ``O_PATH`` descriptor it reaches as ``/proc/self/fd/N``), never by path:
under systemd the helper has its own mount namespace (``ProtectSystem=strict`` and the rest),
whose mounts never propagate to the caller's (``MountFlags=shared`` cannot re-establish that;
found in the VM tier), and it holds no ``CAP_DAC_*``, so it cannot reach a directory owned by
the caller. So the stick is mounted privately: no other process on the node sees it.
``unmount`` accepts only a path this helper made, from the uid it made it for. Every mount and
unmount is an event (``console.usb_mount``). Mounts left behind when the helper stops are
unmounted.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.console import usb
from appliance.console.actiond import bind, connect, read_line, read_line_fds, refusal, send
from appliance.errors import (
    ActionChannelError,
    ActionDeniedError,
    ApplianceError,
    SourceUnavailableError,
    all_error_classes,
)
from appliance.events import EventLog
from appliance.format import actions as rules
from appliance.node.config import load_config
from appliance.node.control_channel import Peer, uids

PERSIST_USER = "appliance-persist"
SOCKET = "usbmount.sock"


@dataclass
class _Mount:
    uid: int
    device: str
    write: bool
    holder: contextlib.ExitStack


class MountServer:
    def __init__(self, config_path: Path, base: Path | None = None) -> None:
        self.config = load_config(config_path)
        self.allowed = frozenset({0}) | uids([PERSIST_USER])
        self.base = base or Path(self.config.run_dir) / "usb"
        self.events = EventLog(self.config.event_log, "usbmount")
        self._mounts: dict[str, _Mount] = {}
        self._lock = threading.Lock()

    def serve_forever(self) -> None:
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        server = bind(Path(self.config.run_dir) / SOCKET, self.handle)
        try:
            with server:
                server.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            mounts, self._mounts = dict(self._mounts), {}
        for m in mounts.values():
            m.holder.close()

    def handle(self, conn: socket.socket) -> None:
        peer = Peer.of(conn)
        fds: list[int] = []
        try:
            if peer.uid not in self.allowed:
                raise ActionDeniedError(f"uid {peer.uid} may not ask the USB helper for mounts")
            request = rules.parse_mount(read_line(conn))
            if request.op == "mount":
                answer, fd = self._mount(request, peer)
                fds.append(fd)
            else:
                answer = self._unmount(request, peer)
        except ActionDeniedError as exc:
            self.events.emit("console.action_refused", backend="usbmount", uid=peer.uid, pid=peer.pid,
                             reason=exc.problem)  # fmt: skip
            answer = refusal(exc)
        except ApplianceError as exc:
            answer = refusal(exc)
        try:
            with contextlib.suppress(OSError):
                send(conn, answer, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _mount(self, request: rules.MountRequest, peer: Peer) -> tuple[dict[str, Any], int]:
        """Mount the stick in a root-owned 0700 directory; the answer and an ``O_PATH`` descriptor of its root."""
        stick = usb.find_stick(request.device)  # udev must report it now as a USB stick (else 83)
        gid = pwd.getpwuid(peer.uid).pw_gid if peer.uid else 0
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="appliance-usb-", dir=self.base))  # 0700, root's
        target = private / "m"
        target.mkdir(mode=0o700)
        holder = contextlib.ExitStack()
        holder.callback(shutil.rmtree, private, True)
        try:
            holder.enter_context(usb.mounted(stick, request.write, target, (peer.uid, gid)))
            fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # no read permission needed here
        except BaseException:
            holder.close()
            raise
        with self._lock:
            self._mounts[str(target)] = _Mount(peer.uid, stick.device, request.write, holder)
        mode = "read-write" if request.write else "read-only"
        self.events.emit("console.usb_mount", op="mount", device=stick.device, uid=peer.uid, mode=mode)
        return {"exit_code": 0, "data": {"path": str(target), "stick": stick.to_dict(), "mode": mode}}, fd

    def _unmount(self, request: rules.MountRequest, peer: Peer) -> dict[str, Any]:
        with self._lock:
            found = self._mounts.get(request.path)
            if found is None or peer.uid not in (0, found.uid):
                raise ActionDeniedError(f"{request.path[:120]} is not a mount this helper made for uid {peer.uid}")
            del self._mounts[request.path]
        found.holder.close()
        self.events.emit("console.usb_mount", op="unmount", device=found.device, uid=peer.uid,
                         mode="read-write" if found.write else "read-only")  # fmt: skip
        return {"exit_code": 0, "data": {"path": request.path}}


class MountClient:
    def __init__(self, run_dir: str, timeout: float = 120.0) -> None:
        self.path = Path(run_dir) / SOCKET
        self.timeout = timeout

    def call(self, request: rules.MountRequest) -> dict[str, Any]:
        data, fds = self._call(request)
        _close(fds)
        return data

    def _call(self, request: rules.MountRequest) -> tuple[dict[str, Any], list[int]]:
        with connect(self.path, "mount", self.timeout) as sock:
            sock.sendall(request.to_line())
            answer, fds = read_line_fds(sock, 1 << 20, self.timeout)  # a mount may take long (blkid, a module)
        try:
            doc = json.loads(answer)
        except ValueError as exc:
            _close(fds)
            raise ActionChannelError(f"the USB helper gave no answer ({exc})") from exc
        if doc.get("exit_code") != 0:
            _close(fds)
            err = doc.get("error") or {}
            code = doc.get("exit_code")
            cls = next((c for c in all_error_classes() if c.exit_code == code), SourceUnavailableError)
            raise cls(f"USB helper: {err.get('problem', 'refused')}", remedy=err.get("remedy"))
        data: dict[str, Any] = doc["data"]
        return data, fds

    @contextlib.contextmanager
    def mounted(self, device: str, write: bool = False) -> Iterator[tuple[usb.Stick, Path]]:
        """The stick mounted by the helper; its root reached through the descriptor the helper sent.

        The path in the answer names the mount point in the helper's own mount namespace (only the key for
        ``unmount``); ``/proc/self/fd/N`` reaches the mounted file system from any namespace.
        """
        data, fds = self._call(rules.MountRequest("mount", device, write))
        try:
            if not fds:
                raise ActionChannelError("the USB helper sent no descriptor of the mounted stick")
            yield usb.Stick(**data["stick"]), Path(f"/proc/self/fd/{fds[0]}")
        finally:
            _close(fds)  # before the unmount: an open descriptor keeps the file system busy
            self.call(rules.MountRequest("unmount", path=data["path"]))


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
