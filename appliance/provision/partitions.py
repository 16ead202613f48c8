"""The checkpoint partitions at first boot: find them by GPT name, format only the empty ones.

Owns: resolving ``CKPT_A``/``CKPT_B`` through ``/dev/disk/by-partlabel`` and the guarded format:
``blkid -p`` (a low-level probe that bypasses blkid's cache) must report *no signature at all*
before ``mkfs.ext4`` runs. A partition with any file system, RAID member, LUKS header or
partition table is never touched — it is reported and left for the mount (or a technician).
Does not own mounting (``var-lib-appliance-{A,B}.mount`` mount by partlabel) or what the store
puts on the file systems.

A cut during ``mkfs.ext4`` leaves either no signature (mke2fs writes the superblocks last), and
the next boot formats again, or a complete file system, which is then kept.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ProvisioningError

SLOT_LABELS = {"A": "CKPT_A", "B": "CKPT_B"}
BLKID_NOTHING_FOUND = 2  # blkid's exit status when it finds no signature (util-linux)
# What blkid -p reports for a signature *on* the device. A GPT partition also reports its own
# table entry (PART_ENTRY_*) and DEVNAME: those describe where it is, not what it holds.
SIGNATURE_FIELDS = ("TYPE", "PTTYPE", "USAGE", "SEC_TYPE")
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=600, check=False)  # noqa: S603


@dataclass(frozen=True)
class PartitionOutcome:
    slot: str
    label: str
    device: str
    action: str  # "formatted" | "kept"
    filesystem: str  # what blkid found ("" before formatting)

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("slot", "label", "device", "action", "filesystem")}


def probe(device: Path, runner: Runner = run) -> dict[str, str]:
    """blkid's low-level probe of ``device``: ``{}`` when it holds no signature at all.

    Any file system, swap, RAID member, LUKS header or nested partition table counts, and so does
    an unrecognised field (fail safe: an unknown is never formatted).
    """
    done = runner(["blkid", "-p", "-o", "export", str(device)])
    if done.returncode == BLKID_NOTHING_FOUND:
        return {}
    if done.returncode != 0:
        raise ProvisioningError(
            f"cannot probe {device}: blkid exit {done.returncode}: {done.stderr.strip()[:200]}",
            remedy="check the storage device (dmesg); nothing was formatted",
        )
    return signature(done.stdout)


def signature(export: str) -> dict[str, str]:
    """The signature fields of ``blkid -p -o export`` output; ``{}`` when it names none."""
    found = dict(line.split("=", 1) for line in export.splitlines() if "=" in line)
    if any(found.get(k) for k in SIGNATURE_FIELDS):
        return found
    unknown = {k for k in found if k != "DEVNAME" and not k.startswith("PART_ENTRY_")}
    return {**found, "TYPE": "unknown"} if unknown else {}  # an unrecognised field: treat as in use


def format_if_empty(slot: str, partlabel_dir: Path, runner: Runner = run) -> PartitionOutcome:
    label = SLOT_LABELS[slot]
    link = partlabel_dir / label
    if not link.exists():
        raise ProvisioningError(
            f"partition {label} not found ({link} is missing)",
            remedy="flash with the CKPT layout (image/l4t, docs/image.md §2); other partitions were not touched",
        )
    device = link.resolve()
    found = probe(device, runner)
    if found:
        kind = found.get("TYPE") or found.get("PTTYPE") or "unknown"
        return PartitionOutcome(slot, label, str(device), "kept", kind)
    done = runner(["mkfs.ext4", "-q", "-F", "-L", label, "-m", "0", str(device)])
    if done.returncode != 0:
        raise ProvisioningError(f"mkfs.ext4 on {device} ({label}) failed: {done.stderr.strip()[:300]}")
    return PartitionOutcome(slot, label, str(device), "formatted", "")


def format_empty_partitions(partlabel_dir: Path, runner: Runner = run) -> list[PartitionOutcome]:
    """Both slots; a missing partition raises after the other one was handled."""
    outcomes, errors = [], []
    for slot in SLOT_LABELS:
        try:
            outcomes.append(format_if_empty(slot, partlabel_dir, runner))
        except ProvisioningError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return outcomes
