"""Binding a node's unix sockets so they are never connectable with a mode other than their final one.

Owns: ``bind_unix`` — bind in a fresh 0700 directory beside the final path, set owner and mode
there, then rename into place. It never changes the process umask: an ``os.umask`` around
``bind`` is process-wide, and a thread creating a file in that moment (the service writing an
export) got the socket's 0600 mode instead of its own (found while the VM tier chased
quarantined exports). Does not own the servers or who may connect (``control_channel``).
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

S = TypeVar("S")


def bind_unix(path: Path, make: Callable[[str], S], share: Callable[[Path], None]) -> S:
    """``make(address)`` bound at ``path`` with ``share(bound_path)`` applied before anyone can reach it.

    A stale socket at ``path`` is replaced; anything else there is left for the rename to
    refuse. Raises ``OSError`` from ``make`` or the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    # 0700: nobody else gets in. Short names: the bound path must fit AF_UNIX's 108 bytes whenever
    # the final one does (".bXXXXXXXX/s" is no longer than "control.sock").
    private = Path(tempfile.mkdtemp(prefix=".b", dir=path.parent))
    try:
        bound = private / "s"
        server = make(str(bound))
        share(bound)
        bound.rename(path)
        return server
    finally:
        shutil.rmtree(private, ignore_errors=True)
