"""Which program mounts a stick: the kernel's driver, a FUSE driver where the kernel has none (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.console import usb

pytestmark = pytest.mark.unit
STICK = usb.Stick("/dev/sda", "vfat", "FIELDKIT")


def test_a_filesystem_module_not_loaded_yet_is_mounted_by_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: Debian's and Ubuntu's kernels build vfat as a module, absent from
    /proc/filesystems until the first FAT mount loads it. With no FUSE driver installed every stick was
    refused ("no kernel or FUSE driver"); the kernel must be asked (it loads the module itself)."""
    monkeypatch.setattr(usb, "_kernel_has", lambda fstype: False)
    monkeypatch.setattr(usb.shutil, "which", lambda name: None)
    command = usb._mount_command(STICK, Path("/run/x/m"), owner=(998, 997))
    assert command[:3] == ["mount", "-t", "vfat"] and command[-2:] == ["/dev/sda", "/run/x/m"]
    options = command[4].split(",")
    assert {"ro", "nosuid", "nodev", "noexec", "uid=998", "gid=997"} <= set(options) and "rw" not in options


def test_a_fuse_driver_is_used_only_where_the_kernel_lacks_the_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usb.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(usb, "_kernel_has", lambda fstype: False)
    assert usb._mount_command(STICK, Path("/m"))[0] == "/usr/bin/fusefat"
    monkeypatch.setattr(usb, "_kernel_has", lambda fstype: True)
    assert usb._mount_command(STICK, Path("/m"))[0] == "mount"
