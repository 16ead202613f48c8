"""USB sticks for tests: a FAT image holding exported checkpoints on a read-only loop device, made visible to
pyudev by umockdev (a synthetic USB block device whose DEVNAME is the loop device).

Needs root (losetup), mtools (mcopy), dosfstools (mkfs.vfat), umockdev (umockdev-run) and a FAT driver (the
kernel's vfat, else fusefat); ``usb_tools_missing`` says which is absent so tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TOOLS = ("losetup", "mcopy", "mkfs.vfat", "umockdev-run")


def usb_tools_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (losetup, mount)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    fat = "vfat" in Path("/proc/filesystems").read_text() or shutil.which("fusefat")
    if not fat:
        missing.append("a FAT driver (kernel vfat or fusefat)")
    return f"missing {', '.join(missing)} (bootstrap/deps.d/40-console.sh)" if missing else None


def make_fat_image(path: Path, layout: Path | None, size_mb: int = 64) -> None:
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(path)], check=True)
    subprocess.run(["mkfs.vfat", "-n", "FIELDKIT", str(path)], check=True, capture_output=True)
    if layout is not None:
        for child in sorted(layout.iterdir()):
            subprocess.run(["mcopy", "-i", str(path), "-s", str(child), "::/"], check=True, capture_output=True)


def attach(image: Path) -> str:
    return subprocess.run(["losetup", "--find", "--show", "-r", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def detach(loop: str) -> None:
    subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)


def umockdev_file(path: Path, loop: str, fstype: str = "vfat", bus: str = "usb") -> Path:
    """A umockdev device description: a USB mass-storage partition whose node is ``loop``."""
    name = loop.removeprefix("/dev/")
    path.write_text(
        f"P: /devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host6/target6:0:0/6:0:0:0/block/sdx/{name}\n"
        f"N: {name}\nE: DEVNAME={loop}\nE: DEVTYPE=partition\nE: SUBSYSTEM=block\nE: ID_BUS={bus}\n"
        f"E: ID_FS_TYPE={fstype}\nE: ID_FS_LABEL=FIELDKIT\nE: ID_VENDOR=SanDisk\nE: ID_MODEL=Cruzer_Blade\n"
        "E: ID_SERIAL=SanDisk_Cruzer_Blade_4C530001\nA: size=131072\n"
    )
    return path


def tech(device_file: Path, config: Path, *args: str, timeout: float = 300) -> tuple[int, dict[str, object], str]:
    """``appliance tech ARGS --json`` with pyudev seeing the umockdev testbed."""
    cmd = ["umockdev-run", "-d", str(device_file), "--", sys.executable, "-m", "appliance.cli.main", "tech", *args,
           "--config", str(config), "--technician", "erin", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = {"stdout": proc.stdout}
    return proc.returncode, doc, proc.stderr
