"""USB import with pyudev against umockdev and a loop-attached FAT image holding exported checkpoints.

The stick is a read-only loop device of a FAT image written with mtools; umockdev makes pyudev see it as a
USB mass-storage partition. The console code mounts it itself (ro,nosuid,nodev,noexec; fusefat where the
kernel has no vfat), lists the checkpoints, imports through the portable-layout import, and unmounts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli.boot_commands import seed
from appliance.cli.main import main
from appliance.events import read_events
from appliance.node.config import load_config
from appliance.node.floor import open_floor
from appliance.store.store import Store
from tests.console import usb_sticks as sticks
from tests.console.conftest import Node, Stick, _stick

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(sticks.usb_tools_missing() is not None, reason=str(sticks.usb_tools_missing())),
]


def generations(node: Node) -> list[int]:
    return sorted(e["generation"] for e in Store.open(node.config.store).log())


def test_stick_is_detected_listed_and_imported_with_a_verified_commit(node: Node, stick: Stick) -> None:
    code, doc, err = sticks.tech(stick.device_file, node.config_path, "usb-list")
    assert code == 0, err
    assert [s["device"] for s in doc["sticks"]] == [stick.loop]  # type: ignore[index]
    code, doc, err = sticks.tech(stick.device_file, node.config_path, "usb-scan", stick.loop)
    assert code == 0, err
    (found,) = doc["checkpoints"]  # type: ignore[misc]
    assert found["generation"] == 4 and found["trusted"] and found["importable"] and found["model"]
    code, doc, err = sticks.tech(stick.device_file, node.config_path, "import", stick.loop, "4", "--progress-json")
    assert code == 0, err
    assert '"progress"' in err and doc["imported"]["generation"] == 4  # type: ignore[index]
    assert generations(node) == [1, 2, 3, 4]
    assert Store.open(node.config.store).verify().all_ok
    assert "appliance-usb-" not in Path("/proc/self/mountinfo").read_text(), "the stick stays mounted"
    event = read_events(node.config.event_log, frozenset({"console.action"}))[-1]
    assert event["fields"]["technician"] == "erin" and event["fields"]["action"] == "import"


def test_untrusted_checkpoint_is_shown_but_not_importable(node: Node, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    assert main(["node-init", str(foreign), "--frame-size", "65536"]) == 0  # its own, untrusted key
    config = load_config(foreign / "node.json")
    for i in range(4):
        seed(config, force=i > 0)
    layout = tmp_path / "layout"
    assert main(["export", str(foreign / "store"), "--generation", "4", str(layout)]) == 0
    for s in _stick(tmp_path, layout):
        code, doc, err = sticks.tech(s.device_file, node.config_path, "usb-scan", s.loop)
        (found,) = doc["checkpoints"]  # type: ignore[misc]
        assert not found["trusted"] and not found["importable"] and "not trusted" in found["problem"]
        code, doc, err = sticks.tech(s.device_file, node.config_path, "import", s.loop, "4")
        assert code == 83 and "not trusted" in str(doc["problem"])
    assert generations(node) == [1, 2, 3]


def test_older_than_floor_checkpoint_is_shown_but_not_importable(node: Node, stick: Stick) -> None:
    open_floor(node.config).raise_to(5)
    code, doc, _ = sticks.tech(stick.device_file, node.config_path, "usb-scan", stick.loop)
    (found,) = doc["checkpoints"]  # type: ignore[misc]
    assert not found["importable"] and "below this node's anti-rollback floor 5" in found["problem"]
    code, doc, _ = sticks.tech(stick.device_file, node.config_path, "import", stick.loop, "4")
    assert code == 83 and generations(node) == [1, 2, 3]


def test_stick_with_hostile_names_is_refused(node: Node, stick_layout: Path, tmp_path: Path) -> None:
    """A bundle renamed to claim another generation, and junk names, are refused or ignored; nothing committed."""
    layout = tmp_path / "hostile"
    shutil.copytree(stick_layout, layout)
    (bundle,) = (layout / "bundles").iterdir()
    digest = bundle.name.split("-", 1)[1]
    bundle.rename(layout / "bundles" / f"{9:020d}-{digest}")  # claims generation 9
    (layout / "bundles" / "AUTORUN.INF").write_text("[autorun]\nopen=evil.exe\n")
    (layout / "bundles" / "00000000000000000010-..json").write_text("{}")
    for s in _stick(tmp_path, layout):
        code, doc, err = sticks.tech(s.device_file, node.config_path, "usb-scan", s.loop)
        assert code == 0, err
        found = doc["checkpoints"]  # type: ignore[index]
        assert [c["generation"] for c in found] == [9] and not found[0]["importable"]
        code, doc, _ = sticks.tech(s.device_file, node.config_path, "import", s.loop, "9")
        assert code == 83
    assert generations(node) == [1, 2, 3]


def test_stick_with_a_flipped_byte_commits_nothing(node: Node, stick_layout: Path, tmp_path: Path) -> None:
    layout = tmp_path / "flipped"
    shutil.copytree(stick_layout, layout)
    local = {p.name for p in Path(node.config.store).rglob("*") if p.is_file()}
    fresh = [p for p in (layout / "blobs").rglob("*") if p.is_file() and p.name not in local]
    assert fresh, "generation 4 must bring frames the node lacks"
    blob = max(fresh, key=lambda p: p.stat().st_size)  # one the import must read from the stick
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    for s in _stick(tmp_path, layout):
        code, doc, _ = sticks.tech(s.device_file, node.config_path, "import", s.loop, "4")
        assert code == 35 and "FrameError" in str(doc["error"])
    assert generations(node) == [1, 2, 3]


def test_non_usb_or_unknown_filesystem_device_is_refused(node: Node, stick: Stick, tmp_path: Path) -> None:
    sata = sticks.umockdev_file(tmp_path / "sata.umockdev", stick.loop, bus="ata")
    code, doc, _ = sticks.tech(sata, node.config_path, "import", stick.loop, "4")
    assert code == 83 and "not a detected USB stick" in str(doc["problem"])
    ntfs = sticks.umockdev_file(tmp_path / "ntfs.umockdev", stick.loop, fstype="ntfs")
    code, doc, _ = sticks.tech(ntfs, node.config_path, "usb-scan", stick.loop)
    assert code == 83
    code, doc, _ = sticks.tech(stick.device_file, node.config_path, "import", "/dev/sda1", "4")
    assert code == 83 and generations(node) == [1, 2, 3]


def test_unreadable_stick_wrong_filesystem_is_a_clear_refusal(node: Node, tmp_path: Path) -> None:
    image = tmp_path / "garbage.img"
    image.write_bytes(b"\xff" * (8 * 1024 * 1024))  # claims vfat in udev, holds no file system
    loop = sticks.attach(image)
    try:
        dev = sticks.umockdev_file(tmp_path / "garbage.umockdev", loop)
        code, doc, _ = sticks.tech(dev, node.config_path, "usb-scan", loop)
        assert code == 69 and "cannot mount" in str(doc["problem"])
    finally:
        sticks.detach(loop)
    assert "appliance-usb-" not in Path("/proc/self/mountinfo").read_text()


def test_stick_removed_mid_import_commits_nothing(node: Node, stick: Stick) -> None:
    """Fault-injection seam: the import's progress callback kills the stick's FUSE driver after the first blob,
    which is what a pulled stick looks like to the reader (ENOTCONN/EIO on every later read)."""
    script = Path(__file__).with_name("usb_pull.py")
    cmd = ["umockdev-run", "-d", str(stick.device_file), "--", sys.executable, str(script), str(node.config_path),
           stick.loop, "4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SourceUnavailableError" in proc.stdout or "FrameError" in proc.stdout, proc.stdout
    assert generations(node) == [1, 2, 3]
    assert Store.open(node.config.store).verify().all_ok


# fusefat's experimental writer leaves FAT[1] = 0x8000 (fsck.vfat finds the volume clean); mtools' strict
# check wants 0xffff there, so the tests read the stick back with that check off.
MTOOLS_ENV = {"PATH": "/usr/bin:/bin", "MTOOLS_SKIP_CHECK": "1"}


def _mdir(image: Path) -> list[str]:
    out = subprocess.run(["mdir", "-b", "-i", str(image), "::/"], capture_output=True, text=True, check=False,
                         env=MTOOLS_ENV).stdout  # fmt: skip
    return [line.strip().lstrip(":/") for line in out.splitlines() if line.strip()]


def test_diagnostics_are_written_to_a_stick_by_the_explicit_read_write_action(node: Node, tmp_path: Path) -> None:
    """Item 4: the stick an import mounts read-only takes a diagnostics bundle only through its own action."""
    import tarfile

    image = tmp_path / "writable.img"
    sticks.make_fat_image(image, None)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    try:
        dev = sticks.umockdev_file(tmp_path / "writable.umockdev", loop)
        code, doc, err = sticks.tech(dev, node.config_path, "diagnostics-usb", loop)
        assert code == 0, (doc, err)
        name = str(doc["file"])
        assert name.startswith("appliance-diagnostics-") and name.endswith(".tar.gz")
        assert "appliance-usb-" not in Path("/proc/self/mountinfo").read_text(), "the stick stays mounted"
    finally:
        sticks.detach(loop)
    assert name in " ".join(_mdir(image)), _mdir(image)
    out = tmp_path / "bundle.tar.gz"
    subprocess.run(["mcopy", "-i", str(image), f"::/{name}", str(out)], check=True, capture_output=True, env=MTOOLS_ENV)
    fsck = subprocess.run(["fsck.vfat", "-n", str(image)], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # the file system the technician takes away is sound
    with tarfile.open(out) as tar:
        members = tar.getnames()
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert members and not any(m.endswith((".key", ".safetensors")) for m in members)
    assert b"PRIVATE KEY" not in blob
    event = read_events(node.config.event_log, frozenset({"console.action"}))[-1]
    assert event["fields"]["action"] == "diagnostics-usb" and event["fields"]["technician"] == "erin"


def test_a_write_protected_stick_refuses_diagnostics_clearly(node: Node, stick: Stick) -> None:
    """The import stick (a read-only loop device, like a stick with its lock switch on) cannot take the bundle."""
    before = _mdir(stick.image)
    code, doc, _ = sticks.tech(stick.device_file, node.config_path, "diagnostics-usb", stick.loop)
    assert code in (69, 83), doc
    assert "cannot" in str(doc["problem"]) and stick.loop in str(doc["problem"])
    assert _mdir(stick.image) == before
    assert "appliance-usb-" not in Path("/proc/self/mountinfo").read_text()
