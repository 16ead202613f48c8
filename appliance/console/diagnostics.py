"""The diagnostics bundle: one .tar.gz a technician hands to support — never keys, never weights.

Owns: ``write_bundle`` and the fixed list of members it writes, each *generated* here from a
read model (nothing is copied from the store, the key directory or the outbox):
``events.jsonl`` (the newest 5 MiB of the event log), ``boot-status.json``, ``status.json``,
``log.json`` (generations without tensor data), ``verify.json`` (signatures and every frame's
SHA-256), ``scrub.json``, ``report.json`` (restore-time report), ``versions.json`` (appliance,
Python, torch, CUDA / nvCOMP and JetPack where present) and ``journal.txt`` (journald excerpt
for the appliance units, when journalctl exists). A final check refuses to write a member that
looks like a private key. Does not own the events, reports or store (read models do).
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import ApplianceError, StorageError
from appliance.node.config import NodeConfig
from appliance.node.identity import open_node_store

EVENTS_MAX = 5 * 1024 * 1024
JOURNAL_LINES = 2000
MEMBERS = ("events.jsonl", "boot-status.json", "status.json", "log.json", "verify.json", "scrub.json",
           "report.json", "versions.json", "journal.txt")  # fmt: skip
_SECRET_MARKERS = (b"PRIVATE KEY", b"BEGIN OPENSSH", b"BEGIN EC PRIVATE")


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, default=str).encode() + b"\n"


def _safely(fn: Any) -> Any:
    try:
        return fn()
    except (ApplianceError, StorageError, OSError, ValueError) as exc:
        return {"unavailable": f"{type(exc).__name__}: {getattr(exc, 'problem', exc)}"}


def _tail(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError as exc:
        return f'{{"unavailable": "{type(exc).__name__}"}}\n'.encode()
    return data if size <= limit else data[data.find(b"\n") + 1 :]


def _dist(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()[:2000]
    except OSError:
        return None


def versions() -> dict[str, Any]:
    """Versions without importing torch (a diagnostics run must not load 2 GB of libraries)."""
    return {
        "appliance": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": _dist("torch"),
        "nvcomp": _dist("nvidia-nvcomp-cu12"),
        "cuda": _read_text("/usr/local/cuda/version.json") or _read_text("/usr/local/cuda/version.txt"),
        "jetpack_l4t": _read_text("/etc/nv_tegra_release"),
        "kernel": platform.release(),
    }


def journal_excerpt() -> str:
    exe = shutil.which("journalctl")
    if exe is None:
        return "journalctl is not installed on this machine\n"
    cmd = [exe, "--no-pager", "-o", "short-iso", "-n", str(JOURNAL_LINES), "-u", "appliance-*",
           "SYSLOG_IDENTIFIER=appliance-console"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"journalctl failed: {exc}\n"
    return proc.stdout or proc.stderr or "(no journal entries)\n"


def collect(config: NodeConfig) -> dict[str, bytes]:
    from appliance.cli.node_commands import boot_status
    from appliance.cli.perf_commands import build_report
    from appliance.store.scrub import load_cursor
    from appliance.store.store import Store

    def store() -> Store:
        return open_node_store(config)

    def scrub_state() -> dict[str, Any]:
        s = store()
        cursor, damaged = load_cursor(s.storage, s.limits)
        return cursor.to_dict() | {"damaged": damaged}

    return {
        "events.jsonl": _tail(config.path("event_log"), EVENTS_MAX),
        "boot-status.json": _dump(_safely(lambda: boot_status(config))),
        "status.json": _dump(_safely(lambda: store().status())),
        "log.json": _dump(_safely(lambda: store().log())),
        "verify.json": _dump(_safely(lambda: store().verify(deep=False).to_dict())),
        "scrub.json": _dump(_safely(scrub_state)),
        "report.json": _dump(_safely(lambda: build_report(store(), config.path("event_log")))),
        "versions.json": _dump(versions()),
        "journal.txt": journal_excerpt().encode(),
    }


def write_bundle(config: NodeConfig, out: Path) -> list[str]:
    """Write the bundle to ``out`` (atomically); returns its member names."""
    members = collect(config)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in MEMBERS:
            data = members[name]
            if any(marker in data for marker in _SECRET_MARKERS):
                data = b"withheld: this member looked like it contained a private key\n"
            info = tarfile.TarInfo(f"appliance-diagnostics-{stamp}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)
    return list(MEMBERS)
