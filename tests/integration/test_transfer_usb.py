"""The portable layout on real FAT32 and exFAT file systems (loop devices), through the CLI.

A stick that is unmounted mid-import (a real lazy unmount, what a desktop does when the stick is
pulled) ends the import with ``SourceUnavailableError`` and loses nothing; the re-run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import save_file

from appliance import api
from appliance.errors import SourceUnavailableError
from appliance.storage import LocalStorage
from appliance.store.store import Store
from appliance.transfer import import_checkpoint
from tests.integration.conftest import nudge, same, weights

pytestmark = [pytest.mark.integration, pytest.mark.root]

MKFS = {"vfat": ["mkfs.vfat", "-F", "32"], "exfat": ["mkfs.exfat"]}
# This kernel may lack the FAT drivers; the FUSE implementations Debian ships are the fallback
# (exfat-fuse; fusefat, whose write support is called experimental, hence its rw+ option).
FUSE = {"vfat": ["fusefat", "-o", "rw+"], "exfat": ["mount.exfat-fuse"]}


def _kernel_has(fs: str) -> bool:
    return any(line.split()[-1] == fs for line in Path("/proc/filesystems").read_text().splitlines())


def _why_not(fs: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (losetup, mount)"
    for tool in ("losetup", "mount", "umount", MKFS[fs][0]):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bootstrap/deps.d/30-travel.sh: dosfstools, exfatprogs)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices"
    if not _kernel_has(fs) and (shutil.which(FUSE[fs][0]) is None or not Path("/dev/fuse").exists()):
        return f"the kernel has no {fs} driver and {FUSE[fs][0]} (FUSE) is not usable"
    return None


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


class Stick:
    """A loop-mounted FAT32/exFAT image: what a technician's USB stick is to the kernel."""

    def __init__(self, tmp: Path, fs: str) -> None:
        self.image, self.mnt, self.fs = tmp / f"{fs}.img", tmp / f"mnt-{fs}", fs
        _run("truncate", "-s", "96M", str(self.image))
        _run(*MKFS[fs], str(self.image))
        self.dev = _run("losetup", "--find", "--show", str(self.image))
        self.mnt.mkdir()
        self.mounted = False

    def mount(self) -> None:
        if _kernel_has(self.fs):
            _run("mount", "-t", self.fs, self.dev, str(self.mnt))
        else:
            _run(*FUSE[self.fs], self.dev, str(self.mnt))
        self.mounted = True

    def umount(self, lazy: bool = False) -> None:
        _run("umount", *(["-l"] if lazy else []), str(self.mnt))
        self.mounted = False

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        subprocess.run(["losetup", "-d", self.dev], check=False)


@pytest.fixture(params=["vfat", "exfat"])
def stick(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stick]:
    reason = _why_not(request.param)
    if reason:
        pytest.skip(reason)
    s = Stick(tmp_path, request.param)
    try:
        s.mount()
        yield s
    finally:
        s.close()


def _cli(*argv: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "appliance.cli.main", *argv, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}


def _node(tmp: Path, name: str) -> tuple[Path, Path]:
    key, root = tmp / "key", tmp / name
    if not key.exists():
        assert _cli("keygen", str(key))[0] == 0
    assert _cli("init", str(root), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096")[0] == 0
    return key, root


def test_export_to_fat_and_import_from_it_round_trips_through_the_cli(stick: Stick, tmp_path: Path) -> None:
    key, src = _node(tmp_path, "src")
    state = nudge(weights(3), 0.01, 1)
    for i, s in enumerate((weights(3), state)):
        save_file(s, str(tmp_path / f"v{i}.safetensors"))
        assert _cli("commit", str(src), str(tmp_path / f"v{i}.safetensors"), "--key", str(key))[0] == 0
    code, exported = _cli("export", str(src), str(stick.mnt / "ckpt"))
    assert code == 0 and exported["generations"] == [2]
    stick.umount()  # the stick travels: nothing survives but what is on the medium
    stick.mount()
    assert _cli("export", str(src), str(stick.mnt / "ckpt"))[1]["blobs_written"] == 0  # resumes: all verified
    _, dst = _node(tmp_path, "dst")
    code, imported = _cli("import", str(dst), str(stick.mnt / "ckpt"))
    assert code == 0 and imported["generation"] == 2 and imported["from_source"] == imported["blobs"]
    assert same(api.load(Store.open(dst)).tensors, state)
    assert _cli("import", str(dst), str(stick.mnt / "ckpt"))[1]["already"] is True


def test_stick_pulled_mid_import_loses_nothing_and_the_rerun_resumes(stick: Stick, tmp_path: Path) -> None:
    key, src = _node(tmp_path, "src")
    state = weights(5, n=256 * 1024)
    save_file(state, str(tmp_path / "v.safetensors"))
    assert _cli("commit", str(src), str(tmp_path / "v.safetensors"), "--key", str(key))[0] == 0
    assert _cli("export", str(src), str(stick.mnt / "ckpt"))[0] == 0
    stick.umount()
    stick.mount()  # cold: the import reads the medium, not the page cache
    _, dst = _node(tmp_path, "dst")
    store = Store.open(dst)
    calls = []

    def pull_after_some(n: int) -> None:
        calls.append(n)
        if len(calls) == 5:
            stick.umount(lazy=True)  # the kernel detaches the file system under the running import

    with pytest.raises(SourceUnavailableError):
        import_checkpoint(store, LocalStorage(stick.mnt / "ckpt"), progress=pull_after_some)
    assert not list((dst / "A" / "checkpoints").iterdir()) and not list((dst / "B" / "checkpoints").iterdir())
    stick.mount()  # plugged in again
    resumed = import_checkpoint(store, LocalStorage(stick.mnt / "ckpt"))
    assert resumed.kept >= 5 and resumed.kept + resumed.from_source == resumed.blobs
    assert same(api.load(store).tensors, state)
