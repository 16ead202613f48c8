"""First boot in a temporary root: formats only empty partitions, provisions, resumes after a cut anywhere.

The image root (factory checkpoint, release trust store, partlabel links, provisioning file) is a
tmp directory laid out as image/customize-rootfs.sh lays out a rootfs; the CKPT partitions are
image files that real blkid and mkfs.ext4 probe and format. With root, they are loop-mounted at the
slots (require_mounts); power cuts are SIGKILLs of the real `appliance firstboot` process at every
step marker. (Losing the page cache as well is the VM tier's cut: tests/vm.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.format.provisioning import STEPS
from appliance.node.config import NodeConfig
from appliance.signing import TrustStore

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "appliance.cli.main"]
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$J4moa2MM0/6uf3HbY2Tf5Fux8JIBTwIhmhxGRE8S9jo"
PROVISION = {
    "format": "appliance.provision",
    "version": 1,
    "device_id": "orin-0042",
    "technicians": [{"name": "ana", "password_hash": HASH}],
    "remote": {"url": "s3://fleet/orin-0042"},
}
SIZE = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release's factory checkpoint: a committed, signed generation, exported (portable layout)."""
    work = tmp_path_factory.mktemp("release")
    node = LocalNode.create(work / "node")
    node.seed()
    out = work / "factory"
    subprocess.run([*CLI, "export", str(work / "node/store"), str(out)], check=True, capture_output=True, timeout=300)
    shutil.copy(work / "node/store/store.json", out / "store.json")
    shutil.copy(work / "node/store/trust.json", work / "release.json")
    return out


def make_image(tmp: Path, factory: Path, *, provision: dict | None = PROVISION) -> tuple[Path, Path]:
    """(image root, node.json) for one fresh node."""
    root = tmp / "image"
    share = root / "usr/share/appliance"
    shutil.copytree(factory, share / "factory")
    (share / "trust").mkdir(parents=True)
    shutil.copy(factory.parent / "release.json", share / "trust/release.json")
    (root / "etc/appliance").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    if provision is not None:
        (root / "etc/appliance/provision.json").write_text(json.dumps(provision))
    links = root / "dev/disk/by-partlabel"
    links.mkdir(parents=True)
    for label in ("CKPT_A", "CKPT_B"):
        disk = tmp / f"{label}.img"
        with open(disk, "wb") as f:
            f.truncate(SIZE)
        (links / label).symlink_to(disk)
    store = tmp / "var/lib/appliance"
    for slot in "AB":
        (store / slot).mkdir(parents=True)
    config = NodeConfig(
        store=str(store), trust=str(root / "etc/appliance/trust.json"), signing_key=str(root / "etc/appliance/device.key"),
        floor_file=str(tmp / "var/lib/appliance-floor/floor.json"), event_log=str(tmp / "log/events.jsonl"),
        run_dir=str(tmp / "run"), outbox=str(tmp / "outbox"), supervisor_socket=str(tmp / "run/s.sock"),
    )  # fmt: skip
    node_json = root / "etc/appliance/node.json"
    node_json.write_bytes(config.to_bytes())
    return root, node_json


def firstboot(root: Path, node_json: Path, phase: str = "all", **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "firstboot", phase, "--config", str(node_json), "--root", str(root), "--json"],
                          capture_output=True, text=True, timeout=300, **kw)  # fmt: skip


def assert_provisioned(root: Path, node_json: Path) -> dict:
    config = json.loads(node_json.read_text())
    done = json.loads((root / "var/lib/appliance-provision/done.json").read_text())
    device = json.loads((root / "etc/appliance/device.json").read_text())
    key = Path(config["signing_key"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    from appliance.signing import PublicKey

    keyid = PublicKey.load(key.with_name(key.name + ".pub")).keyid  # the key may belong to appliance-persist
    assert device["keyid"] == done["keyid"] == keyid and device["role"] == "device"
    assert device["device_id"] == done["device_id"] == "orin-0042"
    trust = TrustStore.from_dict(json.loads(Path(config["trust"]).read_text()))
    release = TrustStore.from_dict(json.loads((root / "usr/share/appliance/trust/release.json").read_text()))
    assert {k.keyid for k in trust.keys} == {k.keyid for k in release.keys} | {keyid}
    assert next(k.comment for k in trust.keys if k.keyid == keyid) == "role=device device_id=orin-0042"
    floor = json.loads(Path(config["floor_file"]).read_text())["floor"]
    assert floor == done["factory_generation"] == 1
    assert not (root / "etc/appliance/provision.json").exists()  # shredded
    techs = json.loads((root / "etc/appliance/technicians.json").read_text())
    assert techs["technicians"] == PROVISION["technicians"]
    assert json.loads((root / "etc/appliance/remote.json").read_text()) == PROVISION["remote"]
    verify = subprocess.run([*CLI, "verify", config["store"], "--json"], capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    return done


def test_first_boot_formats_empty_partitions_and_provisions(tmp_path: Path, factory: Path) -> None:
    root, node_json = make_image(tmp_path, factory)
    done = firstboot(root, node_json)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [(p["label"], p["action"]) for p in out["partitions"]] == [("CKPT_A", "formatted"), ("CKPT_B", "formatted")]
    for label in ("CKPT_A", "CKPT_B"):
        probe = subprocess.run(
            ["blkid", "-p", "-o", "export", str(tmp_path / f"{label}.img")], capture_output=True, text=True
        )
        assert "TYPE=ext4" in probe.stdout and f"LABEL={label}" in probe.stdout
    assert_provisioned(root, node_json)
    events = [json.loads(line)["event"] for line in (tmp_path / "log/events.jsonl").read_text().splitlines()]
    assert events.count("provision.step") == len(STEPS) and events[-1] == "provision.done"
    markers = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("APPLIANCE-FIRSTBOOT")]
    assert markers == list(STEPS)
    again = firstboot(root, node_json)  # the units' condition skips it; run anyway, it changes nothing
    assert again.returncode == 0 and json.loads(again.stdout)["already_done"] is True


def test_a_partition_with_any_filesystem_is_never_formatted(tmp_path: Path, factory: Path) -> None:
    root, node_json = make_image(tmp_path, factory)
    a, b = tmp_path / "CKPT_A.img", tmp_path / "CKPT_B.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "precious", str(a)], check=True)
    subprocess.run(["mkswap", str(b)], check=True, capture_output=True)
    before = a.read_bytes()[: 1 << 20], b.read_bytes()[: 1 << 20]
    done = firstboot(root, node_json, "format")
    assert done.returncode == 0, done.stderr
    assert [(p["action"], p["filesystem"]) for p in json.loads(done.stdout)["partitions"]] == [
        ("kept", "ext4"),
        ("kept", "swap"),
    ]
    assert (a.read_bytes()[: 1 << 20], b.read_bytes()[: 1 << 20]) == before


def test_missing_partition_and_bad_provisioning_file_are_typed_and_resumable(tmp_path: Path, factory: Path) -> None:
    root, node_json = make_image(
        tmp_path, factory, provision={**PROVISION, "technicians": [{"name": "ana", "password": "x"}]}
    )
    (root / "dev/disk/by-partlabel/CKPT_B").unlink()
    done = firstboot(root, node_json, "format")
    assert done.returncode == 80 and "CKPT_B not found" in done.stderr
    assert (
        "LABEL=CKPT_A"
        in subprocess.run(
            ["blkid", "-p", "-o", "export", str(tmp_path / "CKPT_A.img")], capture_output=True, text=True
        ).stdout
    )
    done = firstboot(root, node_json, "provision")
    assert done.returncode == 80 and "plaintext password" in done.stderr
    assert (root / "etc/appliance/provision.json").exists()  # kept for the technician to fix
    (root / "etc/appliance/provision.json").write_text(json.dumps(PROVISION))
    done = firstboot(root, node_json, "provision")
    assert done.returncode == 0, done.stderr
    assert_provisioned(root, node_json)


def _cut_after(root: Path, node_json: Path, step: str) -> bool:
    """Run first boot and SIGKILL it as soon as ``step``'s marker appears; False if it finished first."""
    proc = subprocess.Popen([*CLI, "firstboot", "all", "--config", str(node_json), "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            if line.startswith(f"APPLIANCE-FIRSTBOOT {step} "):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return True
            assert time.monotonic() < deadline, "first boot hung"
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.mark.faults
@pytest.mark.parametrize("step", STEPS[:-1])
def test_a_cut_after_any_step_completes_on_the_next_boot(tmp_path: Path, factory: Path, step: str) -> None:
    root, node_json = make_image(tmp_path, factory)
    assert _cut_after(root, node_json, step)
    assert not (root / "var/lib/appliance-provision/done.json").exists()
    done = firstboot(root, node_json)
    assert done.returncode == 0, done.stderr
    assert_provisioned(root, node_json)


@pytest.fixture
def loop_root() -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("losetup") is None or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices (mount the formatted partitions)")
    yield


@pytest.mark.root
def test_with_real_mounts_required_the_slots_must_be_the_partitions(
    tmp_path: Path, factory: Path, loop_root: None
) -> None:
    root, node_json = make_image(tmp_path, factory)
    config = json.loads(node_json.read_text())
    node_json.write_text(json.dumps({**config, "require_mounts": True}))
    assert firstboot(root, node_json, "format").returncode == 0
    done = firstboot(root, node_json, "provision")
    assert done.returncode == 80 and "not a mount point" in done.stderr  # never writes into bare mount points
    mounted = []
    try:
        for slot in "AB":
            target = Path(config["store"]) / slot
            subprocess.run(
                ["mount", "-o", "loop,noatime,nodev,nosuid,noexec", str(tmp_path / f"CKPT_{slot}.img"), str(target)],
                check=True,
            )
            mounted.append(target)
        done = firstboot(root, node_json, "provision")
        assert done.returncode == 0, done.stderr
        assert_provisioned(root, node_json)
        assert any((Path(config["store"]) / s / "checkpoints").iterdir() for s in "AB")
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=False)


@pytest.mark.root
def test_empty_gpt_partitions_of_a_real_disk_are_formatted_and_then_kept(
    tmp_path: Path, factory: Path, loop_root: None
) -> None:
    """On a block device blkid -p also reports the partition's own GPT entry: that is not a signature."""
    if shutil.which("sgdisk") is None:
        pytest.skip("sgdisk is not installed (gdisk; bootstrap/deps.d/30-image.sh)")
    root, node_json = make_image(tmp_path, factory)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(2 * SIZE + (4 << 20))
    subprocess.run(
        ["sgdisk", "-o", "-n1:0:+48M", "-c1:CKPT_A", "-n2:0:+48M", "-c2:CKPT_B", str(disk)],
        check=True,
        capture_output=True,
    )
    loop = subprocess.run(
        ["losetup", "-f", "--show", "-P", str(disk)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 10
        while not Path(f"{loop}p2").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not Path(f"{loop}p2").exists():
            pytest.skip(f"{loop}p1/p2 never appeared (/dev here creates no partition nodes); the VM tier covers it")
        links = root / "dev/disk/by-partlabel"
        for n, label in ((1, "CKPT_A"), (2, "CKPT_B")):
            (links / label).unlink()
            (links / label).symlink_to(f"{loop}p{n}")
        # (in the VM guest, blkid -p also prints PART_ENTRY_* here: tests/unit/test_provisioning.py)
        done = firstboot(root, node_json, "format")
        assert done.returncode == 0, done.stderr
        assert [p["action"] for p in json.loads(done.stdout)["partitions"]] == ["formatted", "formatted"]
        again = firstboot(root, node_json, "format")
        assert [(p["action"], p["filesystem"]) for p in json.loads(again.stdout)["partitions"]] == [
            ("kept", "ext4")
        ] * 2
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
