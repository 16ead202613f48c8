"""USB sticks: detect them with pyudev, mount them read-only in a private directory, list and import checkpoints.

Owns: ``list_sticks`` (block devices udev reports with ``ID_BUS=usb`` and a known file system,
``appliance.format.console.is_usb_stick``), ``mounted`` (mount ``ro,nosuid,nodev,noexec`` in a
fresh 0700 directory and always unmount and remove it afterwards; the kernel driver when the
kernel has it, else the FUSE driver: ``fusefat`` for FAT, ``mount.exfat-fuse`` for exFAT),
``scan`` (every checkpoint on the stick with model, generation, signers, whether it is trusted
and why it cannot be imported) and ``import_from`` (the portable-layout import,
``appliance.transfer.import_checkpoint``: verified before any bulk copy, every blob hashed as
read, committed last). Mounting is done by this code, never from a udev rule; nothing on the
stick is executed or used as a path.

Needs root (mount): as root (``appliance tech`` over SSH) it mounts itself; on a node the
persistence side's ``appliance tech`` asks the root USB helper (``usbmount``) through
``mounted_device``; the web console never mounts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ActionRefusedError, ApplianceError, SourceUnavailableError, StorageError
from appliance.format import console as rules
from appliance.format.statement import parse_bundle, parse_statement
from appliance.storage import LocalStorage
from appliance.store.store import Store

MOUNT_TIMEOUT_S = 30
# mount/umount/FUSE drivers run with a fixed, minimal environment: nothing from ours (LD_PRELOAD, ...)
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
FUSE_DRIVERS = {"vfat": ["fusefat"], "exfat": ["mount.exfat-fuse"]}


@dataclass(frozen=True)
class Stick:
    device: str  # device node, e.g. /dev/sdb1
    fstype: str
    label: str = ""
    vendor: str = ""
    model: str = ""
    serial: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def list_sticks() -> list[Stick]:
    """USB block devices with a known file system, as udev sees them now (hot-plug: call again)."""
    import pyudev

    sticks = []
    for dev in pyudev.Context().list_devices(subsystem="block", ID_BUS="usb"):
        props = {k: str(dev.properties.get(k, "")) for k in dev.properties}
        props.setdefault("SUBSYSTEM", "block")
        if not rules.is_usb_stick(props) or not dev.device_node:
            continue
        sticks.append(Stick(
            device=str(props.get("DEVNAME") or dev.device_node), fstype=props["ID_FS_TYPE"],
            label=props.get("ID_FS_LABEL", ""), vendor=props.get("ID_VENDOR", ""), model=props.get("ID_MODEL", ""),
            serial=props.get("ID_SERIAL", ""),
        ))  # fmt: skip
    return sorted(sticks, key=lambda s: s.device)


def find_stick(device: str) -> Stick:
    """The detected stick with this device node; anything else (a system disk, a typo) is refused."""
    for stick in list_sticks():
        if stick.device == device:
            return stick
    raise ActionRefusedError(f"{device[:80]} is not a detected USB stick with a known file system (FAT, exFAT, ext)")


def _kernel_has(fstype: str) -> bool:
    try:
        return any(line.split()[-1] == fstype for line in Path("/proc/filesystems").read_text().splitlines() if line)
    except OSError:
        return False


def _mount_command(stick: Stick, target: Path, write: bool = False, owner: tuple[int, int] | None = None) -> list[str]:
    """The mount (or FUSE driver) command; ``write``: read-write (diagnostics), still nosuid,nodev,noexec;
    ``owner``: (uid, gid) the files appear as (FAT/exFAT have no owners; the helper mounts for its caller)."""
    base = [o for o in rules.MOUNT_OPTIONS if o != "ro"]
    if not _kernel_has(stick.fstype):
        for driver in FUSE_DRIVERS.get(stick.fstype, []):
            if exe := shutil.which(driver):
                extra = ["rw+" if write and driver == "fusefat" else "rw" if write else "ro"]
                if owner is not None:
                    extra.append("allow_other")  # reachable only through the descriptor the helper hands over
                return [exe, "-o", ",".join([*extra, *base]), stick.device, str(target)]
    # The kernel's driver: listed in /proc/filesystems, or a module the kernel loads at the first mount
    # (Debian's and Ubuntu's kernels build vfat as a module: a fresh node with no FUSE driver
    # refused every stick). A kernel without it makes mount fail: a clear "cannot mount" refusal.
    extra = ["rw" if write else "ro"]
    if owner is not None and stick.fstype in ("vfat", "exfat"):
        extra += [f"uid={owner[0]}", f"gid={owner[1]}", "fmask=0177", "dmask=0077"]
    return ["mount", "-t", stick.fstype, "-o", ",".join([*extra, *base]), stick.device, str(target)]


@contextlib.contextmanager
def mounted(stick: Stick, write: bool = False, target: Path | None = None,
            owner: tuple[int, int] | None = None) -> Iterator[Path]:  # fmt: skip
    """Mount read-only (``write``: read-write), nosuid, nodev, noexec in a fresh private directory (or the
    empty directory ``target``); unmount and remove it after."""
    _check_signature(stick)
    target = target or Path(tempfile.mkdtemp(prefix="appliance-usb-"))  # 0700, this process's own
    try:
        command = _mount_command(stick, target, write, owner)  # fixed programs; the device is a udev-reported node
        proc = subprocess.run(command, capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S, check=False,  # noqa: S603
                              env=CLEAN_ENV)  # fmt: skip
        if proc.returncode != 0:
            raise SourceUnavailableError(
                f"cannot mount {stick.device} ({stick.fstype}): {(proc.stderr or proc.stdout).strip()[:300]}",
                remedy="check the stick (unreadable or wrong file system?) and plug it in again",
            )
        try:
            if not _is_mounted(target):
                raise SourceUnavailableError(f"{stick.device} did not mount ({stick.fstype} driver gave up)")
            yield target
        finally:
            _unmount(target)
    finally:
        with contextlib.suppress(OSError):
            target.rmdir()


@contextlib.contextmanager
def mounted_device(run_dir: str, device: str, write: bool = False) -> Iterator[tuple[Stick, Path]]:
    """The stick at ``device`` mounted for this process: directly as root (``appliance tech`` over SSH),
    else through the root USB helper (``usbmount``: the persistence side on a node is not root)."""
    if os.geteuid() == 0:
        stick = find_stick(device)
        with mounted(stick, write) as root:
            yield stick, root
        return
    from appliance.console.usbmount import MountClient

    with MountClient(run_dir).mounted(device, write) as (stick, root):
        yield stick, root


def _check_signature(stick: Stick) -> None:
    """The medium itself must carry the file system udev reported (``blkid -p`` probes the device)."""
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    proc = subprocess.run([blkid, "-p", "-o", "value", "-s", "TYPE", stick.device], capture_output=True,  # noqa: S603
                          text=True, timeout=MOUNT_TIMEOUT_S, check=False, env=CLEAN_ENV)  # fmt: skip
    found = proc.stdout.strip()
    if found != stick.fstype:
        # blkid exits 2 both for "no signature" and for a device it could not open (its reason on stderr:
        # "Operation not permitted" is a device policy that does not admit the stick): keep both.
        why = " ".join(proc.stderr.split())[:200]
        raise SourceUnavailableError(
            f"cannot mount {stick.device}: it holds {found or 'no readable file system'!r}, "
            f"not the {stick.fstype} udev reported (blkid exit {proc.returncode}{': ' + why if why else ''})",
            remedy="the stick is unreadable or not formatted as FAT/exFAT/ext4; re-write it with `appliance export`",
        )


def _unmount(target: Path) -> None:
    umount = shutil.which("umount") or "/usr/bin/umount"
    for args in ([umount, str(target)], [umount, "-l", str(target)]):  # -l: busy, detach now, freed when closed
        subprocess.run(args, capture_output=True, timeout=MOUNT_TIMEOUT_S, check=False, env=CLEAN_ENV)  # noqa: S603
        if not _is_mounted(target):
            return


def _is_mounted(path: Path) -> bool:
    try:
        return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())
    except OSError:
        return False


def _describe(source: LocalStorage, key: str, store: Store) -> tuple[str, tuple[str, ...]]:
    """Model and signer key ids from a bundle *without* trusting it (for display only)."""
    try:
        bundle = parse_bundle(source.read(key, store.limits.manifest_max_bytes), store.limits)
        return parse_statement(bundle.payload, store.limits).model, tuple(s.keyid for s in bundle.signatures)
    except (ApplianceError, StorageError, OSError):
        return "", ()


def scan(root: Path, store: Store, floor: int) -> list[rules.StickCheckpoint]:
    """Every checkpoint (bundle) on a mounted stick, newest first, with the import decision for each."""
    from appliance.errors import RevokedKeyError, UntrustedKeyError
    from appliance.transfer import inspect_source
    from appliance.transfer.source import list_bundles

    source = LocalStorage(root)
    found = []
    for name in list_bundles(source):
        model, signers = _describe(source, name.key, store)
        try:
            plan = inspect_source(store, source, generation=name.generation, floor=floor)
        except (UntrustedKeyError, RevokedKeyError) as exc:
            found.append(rules.StickCheckpoint(name.generation, model, signers, False, f"not trusted: {exc.problem}"))
        except (ApplianceError, StorageError) as exc:
            problem = f"{type(exc).__name__}: {getattr(exc, 'problem', exc)}"
            found.append(rules.StickCheckpoint(name.generation, model, signers, True, problem))
        else:
            m, keys = plan.verified.manifest.model, tuple(plan.verified.keyids)
            found.append(rules.StickCheckpoint(name.generation, m, keys, True, "", plan.decision.already))
    return found


def import_from(root: Path, store: Store, generation: int, floor: int,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    from appliance.transfer import import_checkpoint

    return import_checkpoint(store, LocalStorage(root), generation=generation, floor=floor, progress=progress).to_dict()
