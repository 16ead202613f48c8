"""systemd notification (``sd_notify``): READY, STATUS, WATCHDOG over ``NOTIFY_SOCKET``.

Owns: sending one datagram per call. Does not own deciding when (callers send ``WATCHDOG=1``
from the loop that proves progress, never from a free-running timer). A missing socket (not
under systemd, e.g. CI) is not an error: the call returns False.
"""

from __future__ import annotations

import os
import socket


def sd_notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=restoring"``) to systemd; False if not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(lines).encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), ``None`` if not requested."""
    # Under supervisord WATCHDOG_PID names supervisord, not us; the unit's NotifyAccess=all lets
    # a child feed the watchdog, so only the timeout and the socket matter here.
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0 or not os.environ.get("NOTIFY_SOCKET"):
        return None
    return int(usec) / 2e6
