"""Which program mounts a stick: the kernel's driver, a FUSE driver where the kernel has none (no root needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance.console import usb
from appliance.errors import SourceUnavailableError

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


def test_a_stick_blkid_cannot_open_is_refused_with_blkids_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (VM tier, run of 2026-12-05 09:10): the helper's refusal said only "no readable file system";
    blkid exits 2 both for a blank medium and for a node it may not open (a device policy that does not admit
    the stick), so its exit code and stderr must be in the problem, to tell the two apart from the guest."""
    denied = subprocess.CompletedProcess([], 2, stdout="", stderr="blkid: error: /dev/sda: Operation not permitted\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: denied)
    with pytest.raises(SourceUnavailableError) as raised:
        usb._check_signature(STICK)
    problem = str(raised.value)
    assert "no readable file system" in problem and "blkid exit 2" in problem, problem
    assert "Operation not permitted" in problem, problem
    blank = subprocess.CompletedProcess([], 2, stdout="", stderr="")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: blank)
    with pytest.raises(SourceUnavailableError, match=r"\(blkid exit 2\)"):
        usb._check_signature(STICK)
    found = subprocess.CompletedProcess([], 0, stdout="vfat\n", stderr="")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: found)
    usb._check_signature(STICK)  # the medium carries what udev reported: no refusal
