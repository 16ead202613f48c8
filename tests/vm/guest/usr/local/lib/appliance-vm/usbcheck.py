"""VM tier guest agent, USB part (test harness, never shipped): a hot-plugged stick imported as a technician does.

When a USB disk appears (``/sys/block/sd*``), the agent stops adapting (the node is taken into service:
no new state for the next persist to commit over the import), waits until the service reports its
state unchanged, then asks the console's privileged side exactly as the web console does
(``SocketChannel``): ``usb-scan`` and ``import`` on ``RUN/actions.sock`` (served by
``appliance-persist``, which asks the root USB helper for the mount), then ``restart-service`` on
``RUN/boot-actions.sock`` (boot: restore, canary, admit). While the stick is in use it samples the
mount tables of the helper, PID 1 and supervisord (where the stick is mounted and with which
options); afterwards it reports what is left mounted and which user the helper runs as.

Markers: ``usb-detected``, ``usb-quiet``, ``usb-scan``, ``usb-import``, ``usb-mount`` (one per mount
table and options seen), ``usb-mounts``, ``usb-unmounted``, ``usb-helper``, ``usb-restart``, ``usb-done``.
"""

import glob
import json
import os
import pwd
import socket
import subprocess
import threading
import time

RUN = "/run/appliance"
CONFIG = "/etc/appliance/node.json"
APPLIANCE = "/opt/appliance/venv/bin/appliance"
TECHNICIAN = "vmtest"
STICK = "appliance-usb-"


def disks():
    """USB mass-storage disks the kernel has now (the VM's system disks are virtio: vd*)."""
    return sorted(os.path.basename(p) for p in glob.glob("/sys/block/sd*"))


def ask(sock_name, action, args, timeout=1200):
    """One request to a privileged side, as ``SocketChannel`` sends it; (answer, progress lines)."""
    body = {"v": 1, "action": action, "args": list(args), "technician": TECHNICIAN}
    progress = 0
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(f"{RUN}/{sock_name}")
            s.sendall(json.dumps(body).encode() + b"\n")
            for raw in s.makefile("rb"):
                msg = json.loads(raw)
                if "progress" in msg:
                    progress += 1
                    continue
                return msg, progress
    except (OSError, ValueError) as exc:
        return {"exit_code": -1, "error": {"problem": repr(exc)}}, progress
    return {"exit_code": -1, "error": {"problem": "closed without an answer"}}, progress


def _show(unit, prop):
    done = subprocess.run(["systemctl", "show", "-p", prop, "--value", unit], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    return done.stdout.strip()


def main_pid(unit):
    pid = _show(unit, "MainPID")
    return int(pid) if pid.isdigit() and pid != "0" else None


def status_ids(pid):
    """(uid, supplementary gids) of a process, from /proc."""
    uid, groups = "-", "-"
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = line.split()[1]
                elif line.startswith("Groups:"):
                    groups = ",".join(line.split()[1:]) or "-"
    except OSError:
        pass
    return uid, groups


def stick_mounts(tables):
    """(table, mount options, fstype, super options) of every stick mount in the given mount tables."""
    found = set()
    for name, pid in tables.items():
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            if STICK in line:
                fields = line.split()
                sep = fields.index("-")
                found.add((name, fields[5], fields[sep + 1], fields[sep + 3]))
    return found


class Sampler(threading.Thread):
    def __init__(self, tables):
        super().__init__(daemon=True)
        self.tables = tables
        self.seen = set()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.seen |= stick_mounts(self.tables)
            time.sleep(0.1)


def _problem(answer):
    err = answer.get("error") or {}
    return str(err.get("problem", "-")).replace(" ", "_")[:300]


HELPER_UNIT = "appliance-usbmount.service"
HELPER_CGROUP = "/sys/fs/cgroup/system.slice/appliance-usbmount.service"
# blkid -p of the stick three ways: unconfined (root, the agent's unit), inside the helper unit's own cgroup
# (its device policy, compiled when the unit started), and in a fresh transient unit with the helper's
# DevicePolicy/DeviceAllow (a policy resolved now). Only the middle one failing: the policy is stale.
BLKID_THREE_WAYS = r"""
dev=$(ls /dev/sd? 2>/dev/null | head -n 1); [ -n "$dev" ] || { echo no-sd-node; exit 0; }
echo "dev=$dev"; ls -l "$dev"*
out=$(blkid -p "$dev" 2>&1); echo "unconfined: rc=$? $out"
out=$(sh -c 'echo $$ > @CGROUP@/cgroup.procs && exec blkid -p "$1"' sh "$dev" 2>&1); echo "in-helper-cgroup: rc=$? $out"
out=$(systemd-run --quiet --wait --pipe --collect -p DevicePolicy=closed -p 'DeviceAllow=block-sd rw' \
    blkid -p "$dev" 2>&1); echo "fresh-unit: rc=$? $out"
""".replace("@CGROUP@", HELPER_CGROUP)

# What the helper's device policy admits, for every run: the sd majors the kernel has, the unit's DeviceAllow,
# when the helper and modprobe@sd_mod started (CLOCK_MONOTONIC, us), and blkid inside the helper's cgroup.
POLICY = r"""
echo "sd_majors=$(awk '/^Block/{b=1} b && $2=="sd"{printf "%s,", $1}' /proc/devices)"
echo "helper: $(systemctl show -p DeviceAllow -p ExecMainStartTimestampMonotonic @UNIT@ | tr '\n' ' ')"
echo "sd_mod: $(systemctl show -p ActiveState -p Result -p ExecMainStartTimestampMonotonic modprobe@sd_mod.service | tr '\n' ' ')"
dev=$(ls /dev/sd? 2>/dev/null | head -n 1)
out=$(sh -c 'echo $$ > @CGROUP@/cgroup.procs && exec blkid -p -o value -s TYPE "$1"' sh "$dev" 2>&1); echo "in-helper-cgroup: rc=$? $out"
""".replace("@UNIT@", HELPER_UNIT).replace("@CGROUP@", HELPER_CGROUP)


def diagnose(say):
    """Why a USB step failed: the helper's journal, the persist side's log, the kernel's FAT support, and the
    helper's device policy (its DeviceAllow, the block majors the kernel has, blkid inside its cgroup)."""
    for argv in (
        (
            "journalctl",
            "-b",
            "-u",
            HELPER_UNIT,
            "-u",
            "modprobe@sd_mod.service",
            "-u",
            "modprobe@loop.service",
            "-n",
            "25",
            "--no-pager",
            "-o",
            "short-monotonic",
        ),
        ("tail", "-n", "15", "/var/log/appliance/actions.log"),
        (
            "sh",
            "-c",
            "grep -i fat /proc/filesystems; lsmod | grep -i -e fat -e usb_storage -e sd_mod -e uas -e loop; "
            "ls -l /run/appliance",
        ),
        (
            "sh",
            "-c",
            "sed -n '/^Block/,$p' /proc/devices; cat /proc/uptime; "
            f"systemctl show -p DevicePolicy -p DeviceAllow -p ExecMainStartTimestampMonotonic {HELPER_UNIT}; "
            "systemctl show -p ActiveState -p Result -p ExecMainStatus -p ConditionResult "
            "-p ExecMainStartTimestampMonotonic modprobe@sd_mod.service modprobe@loop.service; "
            f"systemctl list-dependencies --after --plain --no-pager {HELPER_UNIT} | grep -e modprobe -e udev",
        ),
        ("sh", "-c", BLKID_THREE_WAYS),
        ("sh", "-c", "dmesg | grep -i -e 'sd ' -e usb-storage -e 'sd_mod' -e 'scsi' | tail -n 12"),
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        text = (done.stdout + done.stderr).replace("\n", " | ")
        say(f"usb-diag {argv[0]} {text[-1500:]}")


def flow(say, agent):
    """The technician's USB import, end to end; ``agent``: what the agent's main loop shares (``Usb``)."""
    agent.unchanged = 0
    agent.paused.set()
    subprocess.run(["udevadm", "settle", "--timeout=60"], capture_output=True, timeout=90, check=False)
    done = subprocess.run([APPLIANCE, "tech", "usb-list", "--config", CONFIG, "--json"], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    try:
        sticks = json.loads(done.stdout).get("sticks", [])
    except ValueError:
        sticks = []
    if not sticks:
        say(f"usb-detected device=- rc={done.returncode} err={done.stderr.strip()[-300:].replace(' ', '_')}")
        diagnose(say)
        agent.paused.clear()
        return
    stick = sticks[0]
    say(f"usb-detected device={stick['device']} fstype={stick['fstype']} label={stick.get('label') or '-'} "
        f"sticks={len(sticks)}")  # fmt: skip
    policy = subprocess.run(["sh", "-c", POLICY], capture_output=True, text=True, timeout=120, check=False)
    say(f"usb-policy {' | '.join(policy.stdout.split(chr(10)))[-1000:]}")
    deadline = time.monotonic() + 180
    while agent.unchanged < 2 and time.monotonic() < deadline:  # two: one may predate the pause
        time.sleep(0.5)
    say(f"usb-quiet unchanged={agent.unchanged}")
    helper = main_pid("appliance-usbmount.service")
    tables = {"helper": helper, "pid1": 1, "supervisord": main_pid("appliance-supervisor.service")}
    sampler = Sampler({k: v for k, v in tables.items() if v})
    sampler.start()
    t0 = time.monotonic()
    scan, _ = ask("actions.sock", "usb-scan", [stick["device"]])
    found = (scan.get("data") or {}).get("checkpoints", [])
    listed = ",".join(f"{c['generation']}:{'importable' if c.get('importable') else 'no'}" for c in found)
    say(f"usb-scan rc={scan.get('exit_code')} checkpoints={listed or '-'} problem={_problem(scan)} "
        f"seconds={time.monotonic() - t0:.1f}")  # fmt: skip
    if scan.get("exit_code") != 0 or not found:
        diagnose(say)
    importable = [c["generation"] for c in found if c.get("importable")]
    imported = {}
    if importable:
        t0 = time.monotonic()
        result, progress = ask("actions.sock", "import", [stick["device"], str(max(importable))])
        imported = (result.get("data") or {}).get("imported", {}) if result.get("exit_code") == 0 else {}
        say(f"usb-import rc={result.get('exit_code')} generation={imported.get('generation', '-')} "
            f"slot={imported.get('slot', '-')} progress={progress} seconds={time.monotonic() - t0:.1f} "
            f"problem={_problem(result)}")  # fmt: skip
        if not imported:
            diagnose(say)
    time.sleep(0.5)
    sampler.done.set()
    sampler.join(10)
    for where, options, fstype, sopts in sorted(sampler.seen):
        say(f"usb-mount where={where} options={options} fstype={fstype} super={sopts}")
    say(f"usb-mounts count={len(sampler.seen)}")
    left = stick_mounts(sampler.tables)
    try:
        base = sorted(os.listdir(f"{RUN}/usb"))
    except OSError:
        base = []
    say(f"usb-unmounted left={len(left)} base={','.join(base) or '-'}")
    uid, groups = status_ids(helper) if helper else ("-", "-")
    unit_user = _show("appliance-usbmount.service", "User") or "root"
    say(f"usb-helper pid={helper or '-'} uid={uid} groups={groups} unit_user={unit_user} "
        f"root_uid=0 persist_uid={pwd.getpwnam('appliance-persist').pw_uid}")  # fmt: skip
    if imported:
        restart, _ = ask("boot-actions.sock", "restart-service", [])
        data = restart.get("data") or {}
        say(f"usb-restart rc={restart.get('exit_code')} restarted={data.get('restarted')} "
            f"boot_exit={data.get('boot_exit_code')} problem={_problem(restart)}")  # fmt: skip
    agent.force_report.set()  # report `serving` again: the generation boot admitted after the canary
    agent.paused.clear()
    say("usb-done")


def run_flow(say, agent):
    """``flow`` in the agent's thread: a crash ends every wait of the host at once (markers with rc=error)."""
    try:
        flow(say, agent)
    except Exception as exc:
        import traceback

        say(f"usb-error {traceback.format_exc()[-1500:]!r}")
        for what in ("usb-detected device=-", "usb-scan rc=error", "usb-import rc=error", "usb-restart rc=error"):
            say(f"{what} problem={type(exc).__name__}")
        agent.paused.clear()
