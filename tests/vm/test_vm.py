"""The image under a real systemd, journald, supervisord and service, in QEMU, with hard power cuts.

One node (module scope) lives through the tests in file order, as a device would: first boot
(provisioning, then serving the factory checkpoint; the real ``systemd-analyze security`` rates
every appliance unit as loaded), a technician's USB stick hot-plugged through QMP and imported
through the console's privileged side, power cuts at random moments during persists
(SIGKILL of QEMU and QMP ``system_reset``, alternating), then its CKPT_A partition is destroyed
and it must boot from CKPT_B. A second node proves the persistence watchdog's ``WatchdogSec``.

Acknowledged generation = the newest ``persist.committed`` the guest reported before the cut.
After every cut the node must serve that generation or a newer committed one (never older), its
served manifest digest must be the committed one, and ``appliance verify --deep`` must pass
(every committed checkpoint decodes to exactly its signed content: never a mixture).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_shipped_config import ANALYZE_GOAL
from tests.vm import stick
from tests.vm.conftest import PERSIST_INTERVAL
from tests.vm.qemu import Vm

pytestmark = pytest.mark.vm
CUTS = int(os.environ.get("VM_CUTS", "20"))  # per CI run; `-m "vm and slow"` runs SLOW_CUTS
SLOW_CUTS = int(os.environ.get("VM_SLOW_CUTS", "100"))
BOOT_TIMEOUT = 600.0  # seconds; 2 shared cores under load can be very slow, KVM or not
SEED = int(os.environ.get("VM_SEED", str(int(time.time()))))


@pytest.fixture(scope="module")
def node(vm_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    vm = Vm(vm_image, tmp_path_factory.mktemp("vm-node"))
    try:
        yield vm
    finally:
        vm.stop()


def committed(vm: Vm, upto: int | None = None) -> list[int]:
    lines = vm.agent_lines()[:upto]
    return [int(line.split("generation=")[1].split()[0]) for line in lines if line.startswith("VMAGENT committed ")]


def boot_and_serve(vm: Vm, before: int, metrics: dict[str, Any] | None = None) -> dict[str, str]:
    started = vm.started_at
    serving = vm.wait("serving", before, BOOT_TIMEOUT)
    if metrics is not None:
        metrics.setdefault("power_on_to_serving_s", []).append(round(time.monotonic() - started, 1))
        metrics.setdefault("guest_uptime_at_serving_s", []).append(float(serving["uptime"]))
    verify = vm.wait("verify", before, BOOT_TIMEOUT)
    assert verify["rc"] == "0", vm.tail()
    unrecorded = [line for line in vm.agent_lines()[before:] if "state not recorded" in line]
    assert not unrecorded, unrecorded  # boot must be able to record attempts, GOOD and BAD (slot ACL mask)
    return serving


def test_first_boot_provisions_then_serves_the_factory_checkpoint(node: Vm, metrics: dict[str, Any]) -> None:
    before = node.start()
    serving = boot_and_serve(node, before, metrics)
    metrics["first_boot_power_on_to_serving_s"] = metrics["power_on_to_serving_s"][-1]
    assert serving["generation"] == "1" and serving["slot"] in ("A", "B")  # the factory checkpoint
    console = node.console()
    for step in ("format", "store", "trust", "factory", "key", "register", "floor", "done"):
        assert f"APPLIANCE-FIRSTBOOT {step} " in console, step
    assert "CKPT_A formatted" in console and "CKPT_B formatted" in console
    failed = node.wait("failed-units", before, 60)
    assert failed["count"] == "0", failed["names"]
    helper = node.wait("usbmount", before, 60)  # the console's root USB helper serves under systemd
    assert (helper["state"], helper["nrestarts"], helper["socket"]) == ("active", "0", "1"), (helper, node.tail())
    journal = node.wait("journal", before, 60)
    assert journal["message_id"] == "443baed6af794a5a92b953b482a774b0"
    assert {"APPLIANCE_GENERATION", "APPLIANCE_SLOT"} <= set(journal["fields"].split(","))
    exposure = security_ratings(node, before)
    metrics["systemd_analyze_security"] = exposure
    print(f"\nsystemd-analyze security in the guest (exposure, goal <= {ANALYZE_GOAL}):")
    for unit, level in sorted(exposure.items()):
        print(f"  {unit}: {level}")
    shipped = {"appliance-boot.service", "appliance-supervisor.service", "appliance-usbmount.service",
               "appliance-firstboot.service", "appliance-firstboot-format.service"}  # fmt: skip
    assert shipped <= set(exposure), exposure
    assert all(level <= ANALYZE_GOAL for level in exposure.values()), exposure
    node.wait("committed", before, 180)  # the persistence watchdog commits under systemd


def security_ratings(vm: Vm, before: int) -> dict[str, float]:
    """unit -> overall exposure, as the guest agent's ``systemd-analyze security --no-pager`` rated it."""
    done = vm.wait("security-done", before, 900)
    assert done["rc"] == "0" and done["units"] == done["rated"], (done, vm.tail())
    lines = vm.agent_lines()[before : int(done["_line"])]
    rated = [
        dict(kv.split("=", 1) for kv in line.split()[2:]) for line in lines if line.startswith("VMAGENT security ")
    ]
    return {r["unit"]: float(r["exposure"]) for r in rated}


def markers(vm: Vm, what: str, after: int, upto: int) -> list[dict[str, str]]:
    prefix = f"VMAGENT {what} "
    return [dict(kv.split("=", 1) for kv in line[len(prefix) :].split() if "=" in kv)
            for line in vm.agent_lines()[after:upto] if line.startswith(prefix)]  # fmt: skip


def usb_log(vm: Vm, after: int) -> str:
    """The USB flow's markers (with the guest's diagnosis of a failed step), for assertion messages."""
    return "\n".join(line for line in vm.agent_lines()[after:] if line.startswith(("VMAGENT usb", "VMAGENT serving")))


def test_a_hot_plugged_usb_stick_is_imported_through_the_console(
    node: Vm, vm_image: Path, tmp_path: Path, metrics: dict[str, Any]
) -> None:
    """A technician's stick (``appliance export`` on FAT) hot-plugged into the serving node is listed by udev,
    mounted read-only by the root helper in its own namespace, imported by the persist side, served after the
    canary, unmounted; pulled out again, the node keeps serving and persisting."""
    if (why := stick.tools_missing()) is not None:
        pytest.skip(why)
    assert node.proc is not None, "needs the provisioned node of the first test"
    generation = max(committed(node), default=1) + 1000  # newer than anything the node commits before the import
    image, generation = stick.make_stick(vm_image / "release", tmp_path, generation)
    pristine = stick.digest(image)
    before = len(node.agent_lines())
    t0 = time.monotonic()
    node.plug_usb_stick(image)
    detected = node.wait("usb-detected", before, 300)
    assert detected["device"].startswith("/dev/sd") and detected.get("fstype") == "vfat", usb_log(node, before)
    scan = node.wait("usb-scan", before, 600)
    assert scan["rc"] == "0" and f"{generation}:importable" in scan["checkpoints"], usb_log(node, before)
    imported = node.wait("usb-import", before, 900)
    assert imported["rc"] == "0" and imported["generation"] == str(generation), usb_log(node, before)
    metrics["usb_import"] = {"generation": generation, "slot": imported["slot"], "scan_s": float(scan["seconds"]),
                             "import_s": float(imported["seconds"]), "progress_lines": int(imported["progress"])}  # fmt: skip
    counted = node.wait("usb-mounts", before, 120)
    mounts = markers(node, "usb-mount", before, int(counted["_line"]))
    assert mounts and {m["where"] for m in mounts} == {"helper"}, mounts  # private: only the helper's namespace
    for m in mounts:
        assert m["fstype"] == "vfat" and {"ro", "nosuid", "nodev", "noexec"} <= set(m["options"].split(",")), m
    unmounted = node.wait("usb-unmounted", before, 60)
    assert unmounted["left"] == "0" and unmounted["base"] == "-", unmounted
    helper = node.wait("usb-helper", before, 60)
    assert helper["unit_user"] == "root" and helper["uid"] == helper["root_uid"], helper  # the unit: no User=
    restart = node.wait("usb-restart", before, 900)
    assert restart["rc"] == "0" and restart["restarted"] == "True", usb_log(node, before)
    serving = node.wait("serving", int(restart["_line"]), BOOT_TIMEOUT)
    assert serving["generation"] == str(generation), (serving, node.tail())  # boot admitted it after the canary
    events = markers(node, "event", before, len(node.agent_lines()))
    usb_mounts = [e for e in events if e.get("name") == "console.usb_mount"]
    assert {e["op"] for e in usb_mounts} == {"mount", "unmount"}, usb_mounts  # each mount undone (scan, import)
    assert all(e["uid"] == helper["persist_uid"] and e["mode"] == "read-only" for e in usb_mounts), usb_mounts
    metrics["usb_plug_to_serving_imported_s"] = round(time.monotonic() - t0, 1)
    node.wait("usb-done", before, 60)
    after = len(node.agent_lines())
    node.unplug_usb_stick()
    removed = node.wait("usb-removed", after, 120)
    assert removed["phase"] == "serving", (removed, node.tail())
    again = node.wait("committed", after, 240)  # still serving and persisting on top of the import
    assert int(again["generation"]) > generation, again
    assert stick.digest(image) == pristine, "the stick was written to (it must be mounted read-only)"
    print(f"\nUSB stick: generation {generation} imported into slot {imported['slot']} "
          f"(scan {scan['seconds']} s, import {imported['seconds']} s), served after the canary; mounts seen: "
          f"{[(m['where'], m['options']) for m in mounts]}; helper uid {helper['uid']}, caller uid "
          f"{helper['persist_uid']}")  # fmt: skip


def _cut_cycle(node: Vm, cuts: int, metrics: dict[str, Any], label: str) -> None:
    rng = random.Random(SEED)
    kinds = {"kill": 0, "system_reset": 0}
    served_newer = 0
    for i in range(cuts):
        node.wait("committed", len(node.agent_lines()) - 1 if i else 0, 240)
        time.sleep(rng.uniform(0.0, 1.5 * PERSIST_INTERVAL))  # a random moment in the persist cycle
        at = len(node.agent_lines())
        acked = max(committed(node, at), default=1)
        if i % 2 == 0:
            node.kill()
            before = node.start()
            kinds["kill"] += 1
        else:
            before = node.reset()
            kinds["system_reset"] += 1
        serving = boot_and_serve(node, before, metrics)
        generation = int(serving["generation"])
        assert generation >= acked, f"cut {i}: serves generation {generation}, older than acknowledged {acked}"
        served_newer += generation > acked
    metrics[f"{label}_cuts"] = {**kinds, "total": cuts, "served_newer_than_acked": served_newer, "seed": SEED}


def test_power_cuts_during_persists_never_lose_an_acknowledged_generation(node: Vm, metrics: dict[str, Any]) -> None:
    assert node.proc is not None, "needs the provisioned node of the first test"
    _cut_cycle(node, CUTS, metrics, "ci")


@pytest.mark.slow
def test_many_power_cuts_nightly(node: Vm, metrics: dict[str, Any]) -> None:
    assert node.proc is not None, "needs the provisioned node of the first test"
    _cut_cycle(node, SLOW_CUTS, metrics, "nightly")


def test_a_destroyed_ckpt_a_partition_boots_from_ckpt_b(node: Vm, metrics: dict[str, Any]) -> None:
    assert node.proc is not None, "needs the provisioned node of the first test"
    before = len(node.agent_lines())
    node.wait("committed", before, 240)  # both slots hold checkpoints once a persist went to the other
    node.kill()
    node.zero_partition_start("CKPT_A")
    before = node.start()
    serving = node.wait("serving", before, BOOT_TIMEOUT)
    assert serving["slot"] == "B", node.tail()
    events = [line for line in node.agent_lines()[before:] if line.startswith("VMAGENT event name=")]
    assert any("name=slot.unavailable" in e and "slot=A" in e for e in events), node.tail()
    metrics["ckpt_a_destroyed_served"] = f"slot B generation {serving['generation']}"


@pytest.mark.slow  # WatchdogSec is 600 s in the VM (tests/vm/guest: TCG emulation starts slowly)
def test_a_hung_persistence_watchdog_is_restarted_by_systemd(
    vm_image: Path, tmp_path: Path, metrics: dict[str, Any]
) -> None:
    vm = Vm(vm_image, tmp_path / "vm-watchdog", append="vmtest.hang_persist=1")
    try:
        before = vm.start()
        boot_and_serve(vm, before)
        frozen = vm.wait("persist-frozen", before, 300)
        t0 = time.monotonic()
        again = vm.wait("serving", int(frozen["_line"]), 1800)  # WatchdogSec, then a restart and a boot
        metrics["watchdog_restart_to_serving_s"] = round(time.monotonic() - t0, 1)
        restarts = vm.wait("supervisor", int(again["_line"]), 120)
        assert int(restarts["nrestarts"]) >= 1, vm.tail()
        vm.wait("committed", int(again["_line"]), 240)  # persisting again
    finally:
        vm.stop()


@pytest.mark.slow  # two boots under TCG plus the watchdog's timeout
def test_a_hung_kernel_is_reset_by_the_hardware_watchdog_and_the_node_comes_back(
    vm_image: Path, tmp_path: Path, metrics: dict[str, Any]
) -> None:
    """The kernel crashes and halts (panic=0: it never reboots itself, and the harness does nothing):
    only the i6300esb that systemd arms through RuntimeWatchdogSec can reset the machine."""
    vm = Vm(vm_image, tmp_path / "vm-hwwatchdog", append="vmtest.hang_kernel=1 panic=0")
    try:
        before = vm.start()
        boot_and_serve(vm, before)
        hung = vm.wait("kernel-hang", before, 600)
        assert hung["state"] == "active" and hung["panic"] == "0", vm.tail()
        assert hung["runtime_watchdog"] not in ("0", "infinity", ""), hung
        t0 = time.monotonic()
        up = vm.wait("up", int(hung["_line"]), 600)  # the guest started again: the watchdog reset it
        metrics["hw_watchdog_reset_s"] = round(time.monotonic() - t0, 1)
        metrics["hw_watchdog"] = f"{hung['identity']} timeout {hung['timeout']} s"
        again = vm.wait("serving", int(up["_line"]), 1800)
        metrics["hw_watchdog_reset_to_serving_s"] = round(time.monotonic() - t0, 1)
        assert int(again["generation"]) >= 1, vm.tail()
        assert vm.proc is not None and vm.proc.poll() is None and vm.starts == 1  # no power-on by the harness
    finally:
        vm.stop()


def test_an_encrypted_node_with_a_tpm2_sealed_kek_serves_after_a_cut_and_not_under_another_tpm(
    vm_image: Path, tmp_path: Path, metrics: dict[str, Any]
) -> None:
    """node.json names a systemd-creds KEK and the VM has a TPM 2.0 (swtpm): first boot seals a new KEK
    to it and creates an encrypted store; the node's unprivileged services unseal it through
    /dev/tpmrm0 (group tss) to restore and to commit; after a hard power cut it serves again; the
    same disks under another TPM (a stolen disk in another machine) serve nothing: recovery "key
    unavailable", no slot marked (docs/image.md §4.4, docs/design.md §14)."""
    vm = Vm(vm_image, tmp_path / "vm-tpm2", append="vmtest.encrypt=tpm2", tpm=True)
    try:
        before = vm.start()
        boot_and_serve(vm, before, metrics)
        kek = vm.wait("kek", before, 600)
        assert kek["provider"] == "systemd-creds" and kek["cred"] == "440:appliance", kek
        assert kek["tpmrm0"] == "660:tss" and set(kek["tss"].split(",")) == {
            "appliance-boot", "appliance-serve", "appliance-persist"}, kek  # fmt: skip
        committed = vm.wait("committed", before, 900)  # the watchdog sealed a commit under the TPM-held key
        vm.kill()
        before = vm.start()
        again = boot_and_serve(vm, before, metrics)
        assert int(again["generation"]) >= int(committed["generation"]), vm.tail()
        vm.kill()
        vm.replace_tpm()
        before = vm.start()
        refused = vm.wait("recovery", before, 1800)
        assert refused["reason"] == "key_unavailable" and "KeyUnavailableError" in refused["first"], refused
        metrics["tpm2_kek"] = (
            f"sealed, served generation {again['generation']} after a cut; another TPM: key unavailable"
        )
    finally:
        vm.stop()
