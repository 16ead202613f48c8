"""The outbox directory: which files wait to be committed, and moving bad ones aside.

Owns: listing exports in sequence order, spotting files that are not exports, quarantining a
file (rename into ``OUTBOX/quarantine/`` + directory fsync) and removing temp files that a
dead writer left behind. Does not own validating an export's content
(``appliance.sources.export``) or committing it (``committer``).

Names: ``export-<20-digit sequence>.safetensors`` (``appliance.format.export``). A writer
creates ``.<name>.tmp-<pid>`` and renames it into place, so a name without a leading dot is
always a complete write — or damage, which validation catches.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.format.export import export_sequence
from appliance.storage import LocalStorage

QUARANTINE = "quarantine"
_TEMP = re.compile(r"\..*\.tmp-(\d+)")


@dataclass
class OutboxScan:
    exports: list[Path] = field(default_factory=list)  # oldest first
    strays: list[Path] = field(default_factory=list)  # files that are not exports at all


def scan(outbox: Path) -> OutboxScan:
    found = OutboxScan()
    try:
        entries = sorted(outbox.iterdir())
    except FileNotFoundError:
        return found
    for path in entries:
        if path.name.startswith(".") or path.name == QUARANTINE:
            continue
        if export_sequence(path.name) is not None and path.is_file() and not path.is_symlink():
            found.exports.append(path)
        else:
            found.strays.append(path)
    found.exports.sort(key=lambda p: export_sequence(p.name) or 0)
    return found


def quarantine(path: Path, outbox: Path) -> Path:
    """Move ``path`` into ``OUTBOX/quarantine/`` under a unique name; it is never committed."""
    target_dir = outbox / QUARANTINE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / f"{path.name}.{time.time_ns()}"
    path.rename(target)
    storage = LocalStorage(outbox)
    storage.fsync_dir(QUARANTINE)
    storage.fsync_dir("")
    return target


def remove_dead_temps(outbox: Path) -> int:
    """Delete temp files whose writer process no longer exists (a crash mid-export)."""
    removed = 0
    try:
        entries = list(outbox.iterdir())
    except FileNotFoundError:
        return 0
    for path in entries:
        m = _TEMP.fullmatch(path.name)
        if m and not _alive(int(m[1])):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
