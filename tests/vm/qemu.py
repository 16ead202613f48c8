"""The VM tier's machine: QEMU booting the image, its serial markers, QMP, hard power cuts.

Owns: one virtual node (``Vm``): a copy-on-write overlay over the cached root disk, a GPT disk
with ``CKPT_A``/``CKPT_B`` (so ``/dev/disk/by-partlabel`` matches the Jetson), the i6300esb watchdog
(``-action watchdog=reset``) and qemu-xhci, KVM when usable and TCG otherwise; starting it, waiting
for marker lines (the guest agent writes ``VMAGENT ...`` to the second serial port, systemd units
write to the console on the first), cutting power (SIGKILL of QEMU, or QMP ``system_reset``),
hot-plugging a USB stick (QMP ``blockdev-add`` + ``device_add usb-storage`` on the xhci bus) and
damaging a partition from the host. Every wait has a timeout and fails with the console's tail.

Disks use ``cache=none`` (O_DIRECT; flushes honoured), never ``cache=unsafe``: a cut loses what the
guest had not yet written, like a power loss, but nothing it had flushed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CKPT_PART_MIB = 512
MARKER = re.compile(r"^VMAGENT (\S+)(.*)$")


_KVM: dict[str, bool] = {}


def kvm_usable(kernel: Path | None = None) -> bool:
    """KVM is used only if it really boots a kernel: nested KVM on some hosts hangs after the boot stub.

    ``VM_ACCEL=kvm|tcg`` overrides the probe (20 s at most, once per process).
    """
    forced = os.environ.get("VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or kernel is None:
        return False
    if "kvm" not in _KVM:
        _KVM["kvm"] = _probe_kvm(kernel)
    return _KVM["kvm"]


def _probe_kvm(kernel: Path, timeout: float = 20.0) -> bool:
    log = Path(f"/tmp/appliance-kvm-probe-{os.getpid()}.log")
    log.unlink(missing_ok=True)
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "kvm", "-m", "512", "-display", "none", "-nic", "none", "-kernel", str(kernel),
         "-append", "console=ttyS0 panic=-1", "-serial", f"file:{log}", "-monitor", "none", "-no-reboot"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    ok = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and "Linux version" in log.read_text(errors="replace"):
                ok = True
                break
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(30)
        log.unlink(missing_ok=True)
    return ok


class VmTimeout(AssertionError):
    pass


class Vm:
    def __init__(self, image: Path, work: Path, *, append: str = "", memory_mib: int = 2048, tpm: bool = False) -> None:
        self.image = image.resolve()
        self.work = work
        self.append = append
        self.memory_mib = memory_mib
        self.proc: subprocess.Popen[bytes] | None = None
        self.tpm_dir = work / "tpm" if tpm else None  # swtpm's NVRAM: the TPM survives power cuts, as a chip does
        self.swtpm: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0.0
        work.mkdir(parents=True, exist_ok=True)
        self.root = work / "root.qcow2"
        self.ckpt = work / "ckpt.img"
        self.qmp_path = work / "qmp.sock"
        self.agent_log = work / "agent.log"
        self.console_log = work / "console.log"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image / "root.img"), "-F", "raw",
                        str(self.root)], check=True, timeout=60)  # fmt: skip
        with open(self.ckpt, "wb") as f:
            f.truncate((2 * CKPT_PART_MIB + 8) * 1024 * 1024)
        subprocess.run(["sgdisk", "-o", f"-n1:0:+{CKPT_PART_MIB}M", "-c1:CKPT_A", f"-n2:0:+{CKPT_PART_MIB}M",
                        "-c2:CKPT_B", str(self.ckpt)], check=True, capture_output=True, timeout=60)  # fmt: skip

    # --- power ------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        self.accel = "kvm" if kvm_usable(self.image / "vmlinuz") else "tcg"
        accel = ["-accel", "kvm"] if self.accel == "kvm" else ["-accel", "tcg,thread=multi"]
        append = f"root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=1 {self.append}".strip()
        return [
            "qemu-system-x86_64", *accel, "-m", str(self.memory_mib), "-smp", "2", "-display", "none",
            "-nic", "none", "-no-user-config", "-nodefaults", "-vga", "none",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"), "-append", append,
            "-drive", f"file={self.root},if=none,id=root,format=qcow2,cache=none",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"file={self.ckpt},if=none,id=ckpt,format=raw,cache=none",
            "-device", "virtio-blk-pci,drive=ckpt",
            "-device", "i6300esb", "-action", "watchdog=reset",
            "-device", "qemu-xhci,id=xhci",
            "-chardev", f"file,id=console,path={self.console_log},append=on", "-serial", "chardev:console",
            "-chardev", f"file,id=agent,path={self.agent_log},append=on", "-serial", "chardev:agent",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            *self._tpm_args(),
        ]  # fmt: skip

    # --- TPM 2.0 (swtpm, the reference TPM emulator QEMU's tpm-tis talks to) ---------------------------

    def _tpm_args(self) -> list[str]:
        if self.tpm_dir is None:
            return []
        sock = self.tpm_dir / "swtpm.sock"
        return ["-chardev", f"socket,id=chrtpm,path={sock}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                "-device", "tpm-tis,tpmdev=tpm0"]  # fmt: skip

    def _start_tpm(self) -> None:
        """swtpm for this power-on (a power cut kills it with QEMU: volatile TPM state is lost, NVRAM kept)."""
        if self.tpm_dir is None:
            return
        self._stop_tpm()
        self.tpm_dir.mkdir(parents=True, exist_ok=True)
        sock = self.tpm_dir / "swtpm.sock"
        sock.unlink(missing_ok=True)
        with open(self.work / "swtpm.stderr", "ab") as err:
            self.swtpm = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.tpm_dir}", "--ctrl",
                 f"type=unixio,path={sock}", "--log", f"file={self.work / 'swtpm.log'},level=1"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.swtpm.poll() is not None or time.monotonic() > deadline:
                raise VmTimeout(f"swtpm did not start (rc {self.swtpm.poll()}); see {self.work / 'swtpm.stderr'}")
            time.sleep(0.1)

    def _stop_tpm(self) -> None:
        if self.swtpm is not None:
            if self.swtpm.poll() is None:
                self.swtpm.kill()
            self.swtpm.wait(30)
            self.swtpm = None

    def replace_tpm(self) -> None:
        """Another machine's TPM (a fresh one): what a disk moved to another node meets. Powered off only."""
        assert self.proc is None and self.tpm_dir is not None
        shutil.rmtree(self.tpm_dir, ignore_errors=True)

    def start(self) -> int:
        """Power on; returns the agent-log line count before this boot (wait from there)."""
        assert self.proc is None, "already running"
        self.starts += 1
        before = len(self.agent_lines())
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()
        self.started_at = time.monotonic()
        self._start_tpm()
        with open(self.work / "qemu.stderr", "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=err)
        return before

    def kill(self) -> None:
        """Hard power cut: SIGKILL QEMU (the guest gets no chance to flush or unmount)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(60)
            self.proc = None
        self._stop_tpm()

    def reset(self) -> int:
        """Hard reset through QMP (``system_reset``): same power-loss effect, no new QEMU process."""
        before = len(self.agent_lines())
        self.qmp({"execute": "system_reset"})
        self.started_at = time.monotonic()
        return before

    def stop(self) -> None:
        if self.proc is None:
            self._stop_tpm()
            return
        with contextlib.suppress(Exception):
            self.qmp({"execute": "quit"})
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None
        self._stop_tpm()

    def qmp(self, *commands: dict) -> list[dict]:
        deadline = time.monotonic() + 30
        while not self.qmp_path.exists():
            if time.monotonic() > deadline:
                raise VmTimeout("QMP socket never appeared")
            time.sleep(0.1)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            out = []
            for cmd in ({"execute": "qmp_capabilities"}, *commands):
                f.write(json.dumps(cmd) + "\n")
                f.flush()
                while True:
                    msg = json.loads(f.readline())
                    if "return" in msg or "error" in msg:
                        break
                out.append(msg)
            return out[1:]

    # --- USB hot-plug ------------------------------------------------------------------------------

    def plug_usb_stick(self, image: Path, name: str = "stick") -> None:
        """Hot-plug a ``usb-storage`` device backed by ``image`` (raw, writable) into the running guest."""
        answers = self.qmp(
            {"execute": "blockdev-add", "arguments": {"node-name": f"{name}-disk", "driver": "raw",
                                                       "file": {"driver": "file", "filename": str(image)}}},
            {"execute": "device_add", "arguments": {"driver": "usb-storage", "id": name, "bus": "xhci.0",
                                                     "drive": f"{name}-disk", "removable": True}},
        )  # fmt: skip
        errors = [a["error"] for a in answers if "error" in a]
        assert not errors, f"hot-plug refused: {errors}"

    def unplug_usb_stick(self, name: str = "stick", timeout: float = 60.0) -> None:
        """Pull the stick (``device_del``), then drop its backing block node once QEMU has let go of it."""
        answers = self.qmp({"execute": "device_del", "arguments": {"id": name}})
        assert not [a for a in answers if "error" in a], answers
        deadline = time.monotonic() + timeout
        while True:
            answers = self.qmp({"execute": "blockdev-del", "arguments": {"node-name": f"{name}-disk"}})
            if not [a for a in answers if "error" in a]:
                return
            if time.monotonic() > deadline:
                raise VmTimeout(f"the stick's block node is still in use after device_del: {answers}")
            time.sleep(1)

    # --- markers ----------------------------------------------------------------------------------

    def agent_lines(self) -> list[str]:
        try:
            return self.agent_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait(self, what: str, after: int, timeout: float) -> dict[str, str]:
        """The first ``VMAGENT <what> k=v ...`` line past line ``after``, as a dict (``_line``: its index)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, line in enumerate(self.agent_lines()[after:], start=after):
                m = MARKER.match(line)
                if m and m[1] == what:
                    fields = dict(kv.split("=", 1) for kv in m[2].split() if "=" in kv)
                    return {**fields, "_line": str(i)}
            if self.proc is not None and self.proc.poll() is not None:
                raise VmTimeout(f"QEMU exited ({self.proc.returncode}) before `{what}`\n{self.tail()}")
            if time.monotonic() > deadline:
                raise VmTimeout(f"no `VMAGENT {what}` within {timeout:.0f}s\n{self.tail()}")
            time.sleep(0.2)

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 40) -> str:
        agent = "\n".join(self.agent_lines()[-15:])
        console = "\n".join(self.console().splitlines()[-n:])
        return f"--- agent ---\n{agent}\n--- console ---\n{console}"

    # --- damage -----------------------------------------------------------------------------------

    def partition_offset(self, label: str) -> tuple[int, int]:
        """(byte offset, byte size) of the GPT partition named ``label`` in the CKPT disk."""
        table = json.loads(subprocess.run(["sfdisk", "--json", str(self.ckpt)], check=True, capture_output=True,
                                          text=True, timeout=60).stdout)["partitiontable"]  # fmt: skip
        sector = table.get("sectorsize", 512)
        part = next(p for p in table["partitions"] if p.get("name") == label)
        return part["start"] * sector, part["size"] * sector

    def zero_partition_start(self, label: str, nbytes: int = 8 << 20) -> None:
        """Destroy the file system of ``label`` (superblock, group descriptors, journal start)."""
        assert self.proc is None, "damage the disk with the VM off"
        offset, _ = self.partition_offset(label)
        with open(self.ckpt, "r+b") as f:
            f.seek(offset)
            f.write(b"\0" * nbytes)
            f.flush()
            os.fsync(f.fileno())


def have_tools() -> str | None:
    """Why the VM tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, chroot)"
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "sgdisk", "sfdisk", "mkfs.ext4", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bootstrap/deps.d/30-image.sh)"
    return None
