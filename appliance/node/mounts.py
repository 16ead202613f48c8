"""Is a slot really there? Mount-point checks for slots that live on their own partitions.

Owns: ``unavailable_slots`` — which slots must not be read or written because their directory
is missing or (with ``require_mounts``) is a bare directory where a partition should be
mounted. Does not own mounting (systemd mount units do) or what to do about it (callers).

Why it matters: an unmounted mount point is an empty directory on the root file system; a
commit into it would land on the wrong disk and vanish when the partition is mounted again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from appliance.format.commit import SLOT_NAMES


def unavailable_slots(
    store: str | Path,
    require_mounts: bool,
    ismount: Callable[[str], bool] = os.path.ismount,
) -> dict[str, str]:
    """``{slot: reason}`` for every slot that is missing or, when required, not a mount point."""
    out = {}
    for slot in SLOT_NAMES:
        path = Path(store) / slot
        if not path.is_dir() or path.is_symlink():
            out[slot] = f"{path} is missing"
        elif require_mounts and not ismount(str(path)):
            out[slot] = f"{path} is not a mount point (its partition is not mounted)"
    return out
