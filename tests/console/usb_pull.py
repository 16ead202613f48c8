"""Helper for test_stick_removed_mid_import_commits_nothing (runs under umockdev-run so pyudev sees the stick).

Fault-injection seam (a stand-in for a hand pulling the stick): the import's progress callback kills the
fusefat process serving the mount after the first bytes arrive. Prints the error class the import raised.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from appliance.console import operations as ops
from appliance.errors import ApplianceError
from appliance.node.config import load_config


def driver_pids(device: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"fusefat") and device.encode() in argv:
            pids.append(int(proc.name))
    return pids


def main() -> int:
    config_path, device, generation = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pulled = []

    def pull(done: int, total: int) -> None:
        if not pulled:
            pids = driver_pids(device)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            pulled.append(pids)

    try:
        ops.usb_import(load_config(config_path), "erin", device, generation, pull)
    except ApplianceError as exc:
        print(type(exc).__name__, exc.problem, pulled)
        return 0 if pulled and pulled[0] else 2
    print("imported despite the pull", pulled)
    return 1


if __name__ == "__main__":
    sys.exit(main())
