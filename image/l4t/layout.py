"""Derive the node's NVMe partition layout from NVIDIA's ``flash_l4t_t234_nvme.xml``.

Owns: inserting the two checkpoint partitions ``CKPT_A`` and ``CKPT_B`` (our model slots,
independent of the OS's own A/B slots) into an L4T partition layout, and the rules a layout must
meet for the node (``check``). Does not own flashing (``l4t_initrd_flash.sh``, docs/image.md) or
formatting the partitions (first boot, ``bootstrap/appliance-firstboot``).

Rules (Jetson Linux r36 Developer Guide, "Partition Configuration"; docs/image.md §2):

- ``CKPT_A``/``CKPT_B`` are user partitions: ``type="data"``, names of at most 36 characters;
- they carry **no** ``id``: the node addresses them by GPT name (``/dev/disk/by-partlabel/CKPT_A``),
  never by number, and ``APP`` (the rootfs, ``id="1"``) must stay ``p1`` (``APP_b`` ``p2`` under
  rootfs A/B) because the bootloader and ``nvbootctrl`` expect it there;
- they sit before ``APP``, whose ``allocation_attribute 0x808`` gives it the rest of the disk;
- sizes are whole 16 KiB-aligned byte counts; without ``<filename>`` they are flashed empty and
  first boot formats them.

Usage::

    python3 image/l4t/layout.py Linux_for_Tegra/tools/kernel_flash/flash_l4t_t234_nvme.xml \\
        -o flash_l4t_t234_nvme_ckpt.xml [--ckpt-size BYTES]
    python3 image/l4t/layout.py --check image/l4t/flash_l4t_t234_nvme_ckpt.xml

Exit status: 0 written/valid, 1 the layout breaks a rule (each problem printed), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

CKPT_NAMES = ("CKPT_A", "CKPT_B")
DEFAULT_CKPT_SIZE = 8 * 1024**3  # bytes per slot partition; a checkpoint slot holds two generations
ALIGN = 16384  # bytes; L4T's align_boundary for user partitions
NAME_MAX = 36  # GPT partition names are 36 UTF-16 code units

_FIELDS = (
    ("allocation_policy", "sequential"),
    ("filesystem_type", "basic"),
    ("size", None),
    ("file_system_attribute", "0"),
    ("allocation_attribute", "8"),
    ("align_boundary", str(ALIGN)),
    ("percent_reserved", "0"),
)


def _partition(name: str, size: int, indent: str, step: str) -> ET.Element:
    part = ET.Element("partition", {"name": name, "type": "data"})
    part.text = "\n" + indent + step
    children = []
    for tag, value in _FIELDS:
        child = ET.SubElement(part, tag)
        child.text = f" {size if value is None else value} "
        children.append(child)
    desc = ET.SubElement(part, "description")
    desc.text = (
        f" appliance checkpoint slot {name[-1]}: ext4, formatted at first boot, mounted by partlabel"
        f" at /var/lib/appliance/{name[-1]}. "
    )
    children.append(desc)
    for child in children[:-1]:
        child.tail = "\n" + indent + step
    children[-1].tail = "\n" + indent
    return part


def add_ckpt_partitions(tree: ET.ElementTree, size: int = DEFAULT_CKPT_SIZE) -> ET.ElementTree:
    """Insert ``CKPT_A`` and ``CKPT_B`` right before ``APP`` (in place); returns ``tree``.

    Raises ``ValueError`` when there is no single external device with an ``APP`` partition,
    when the layout already has checkpoint partitions, or when ``size`` is not 16 KiB aligned.
    """
    if size <= 0 or size % ALIGN:
        raise ValueError(f"checkpoint partition size must be a positive multiple of {ALIGN} bytes, got {size}")
    device = _device(tree)
    parts = list(device.findall("partition"))
    names = [p.get("name") for p in parts]
    if any(n in names for n in CKPT_NAMES):
        raise ValueError("the layout already has CKPT partitions")
    if "APP" not in names:
        raise ValueError("the layout has no APP partition (not an L4T rootfs layout)")
    app = parts[names.index("APP")]
    at = list(device).index(app)
    indent = app.tail if app.tail is not None else "\n        "
    indent = indent.strip("\n") or "        "
    step = "    "
    for offset, name in enumerate(CKPT_NAMES):
        part = _partition(name, size, indent, step)
        part.tail = "\n" + indent
        device.insert(at + offset, part)
    return tree


def _device(tree: ET.ElementTree) -> ET.Element:
    root = tree.getroot()
    devices = [d for d in root.iter("device") if d.find("partition[@name='APP']") is not None]
    if len(devices) != 1:
        raise ValueError(f"expected one device holding APP, found {len(devices)}")
    return devices[0]


def check(tree: ET.ElementTree, size: int | None = None) -> list[str]:
    """Every way ``tree`` breaks the node's partition rules (empty = valid)."""
    problems: list[str] = []
    try:
        device = _device(tree)
    except ValueError as exc:
        return [str(exc)]
    parts = device.findall("partition")
    names = [p.get("name", "") for p in parts]
    if len(set(names)) != len(names):
        problems.append("partition names are not unique")
    ids = {p.get("name"): p.get("id") for p in parts if p.get("id") is not None}
    if ids.get("APP") != "1":
        problems.append(f"APP must keep id 1 (p1), has {ids.get('APP')!r}")
    if [n for n, i in ids.items() if i == "1"] != ["APP"]:
        problems.append("only APP may have id 1")
    for name in CKPT_NAMES:
        if names.count(name) != 1:
            problems.append(f"{name} must appear exactly once")
            continue
        part = parts[names.index(name)]
        if part.get("type") != "data":
            problems.append(f"{name} must be type=data, is {part.get('type')!r}")
        if part.get("id") is not None:
            problems.append(f"{name} must have no id (addressed by partlabel), has id={part.get('id')}")
        if len(name) > NAME_MAX:
            problems.append(f"{name} is longer than {NAME_MAX} characters")
        if part.find("filename") is not None:
            problems.append(f"{name} must be flashed empty (no <filename>); first boot formats it")
        problems += _size_problems(name, part, size)
        if names.index(name) > names.index("APP"):
            problems.append(f"{name} must come before APP (APP takes the rest of the disk)")
    return problems


def _size_problems(name: str, part: ET.Element, size: int | None) -> list[str]:
    text = (part.findtext("size") or "").strip()
    try:
        value = int(text, 0)
    except ValueError:
        return [f"{name} size {text!r} is not a byte count"]
    out = []
    if value <= 0 or value % ALIGN:
        out.append(f"{name} size {value} is not a positive multiple of {ALIGN}")
    if size is not None and value != size:
        out.append(f"{name} size is {value}, expected {size}")
    return out


def load(path: Path) -> ET.ElementTree:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    return ET.parse(path, parser)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="add CKPT_A/CKPT_B to an L4T partition layout, or check one")
    p.add_argument("xml", type=Path, help="NVIDIA's flash_l4t_t234_nvme.xml (or a derived layout with --check)")
    p.add_argument("-o", "--output", type=Path, help="where to write the derived layout")
    p.add_argument("--ckpt-size", type=int, default=DEFAULT_CKPT_SIZE, help="bytes per CKPT partition")
    p.add_argument("--check", action="store_true", help="only check XML against the rules")
    args = p.parse_args(argv)
    tree = load(args.xml)
    if not args.check:
        if args.output is None:
            p.error("-o OUTPUT is required unless --check")
        try:
            add_ckpt_partitions(tree, args.ckpt_size)
        except ValueError as exc:
            print(f"error: {args.xml}: {exc}", file=sys.stderr)
            return 1
    problems = check(tree, None if args.check else args.ckpt_size)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    if not args.check:
        header = f"<!-- Derived by image/l4t/layout.py from {args.xml.name}: CKPT_A/CKPT_B added before APP. -->\n"
        args.output.write_bytes(header.encode() + ET.tostring(tree.getroot(), encoding="utf-8") + b"\n")
        print(f"wrote {args.output} (CKPT_A, CKPT_B: {args.ckpt_size} bytes each, before APP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
