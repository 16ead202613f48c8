"""VM tier guest agent (test harness, never shipped): the node's state as marker lines on /dev/ttyS1.

Lines: ``VMAGENT <what> key=value ...``. It reports: start (guest uptime), serving (generation,
slot, manifest digest, uptime), each persist.committed event, a deep verify of the store after
serving, failed units, and journald's copy of boot.serving with its MESSAGE_ID and APPLIANCE_*
fields. It keeps the model changing (POST /v1/adapt) so every persist commits new state. It asks
the service over its control socket as root (the network listener exposes neither the handoff
nor adaptation, design §7.1.1).
Once per node it rates every appliance unit with the real ``systemd-analyze security`` (the units as
systemd loaded them, drop-ins included). A hot-plugged USB stick is imported through the console's
privileged side (``usbcheck``).
Scenario knobs come from the kernel command line: ``vmtest.hang_persist=1`` freezes the
persistence watchdog (SIGSTOP) after the first commit, to prove systemd's WatchdogSec restarts it;
``vmtest.hang_kernel=1`` (with ``panic=0``: the kernel never reboots itself) crashes the kernel once
per node after the first commit (sysrq ``c``), so only the hardware watchdog that systemd's
``RuntimeWatchdogSec`` arms (the VM's i6300esb) can bring the node back.
"""

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time

import usbcheck

APPLIANCE = "/opt/appliance/venv/bin/appliance"
EVENTS = "/var/log/appliance/events.jsonl"
CONTROL = "/run/appliance/control.sock"
BOOT_SERVING_ID = "443baed6af794a5a92b953b482a774b0"
SECURITY_DONE = "/var/lib/appliance-vm/security.done"
KERNEL_HUNG = "/var/lib/appliance-vm/kernel-hung.once"
EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)")
OUT = open("/dev/ttyS1", "w", buffering=1)  # noqa: SIM115


SAY = threading.Lock()  # the USB flow reports from its own thread: whole lines only


def say(line):
    with SAY:
        OUT.write(f"VMAGENT {line}\n")
        OUT.flush()


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


class _Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(CONTROL)


def call(path, body=None, timeout=5):
    conn = _Unix("localhost", timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request("GET" if body is None else "POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def ready():
    try:
        status, body = call("/v1/status", timeout=2)
    except Exception:
        return None
    return body if status == 200 and isinstance(body, dict) and body.get("phase") == "serving" else None


def run(*argv, timeout=300):
    """(exit code, stdout); a program the guest lacks is 127, never an exception: the VM run of 2026-12-05
    21:02 lost the agent twice (systemd restarted it) on ``getfacl``, absent from the base rootfs."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        return 127, f"{argv[0]}: not installed ({exc.strerror})"
    return done.returncode, done.stdout


class Events:
    def __init__(self):
        self.pos = os.path.getsize(EVENTS) if os.path.exists(EVENTS) else 0

    def new(self):
        try:
            with open(EVENTS, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        out = []
        for line in data[:cut].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def persist_pid():
    code, out = run("pgrep", "-f", "appliance persist --config")
    pids = [int(p) for p in out.split()] if code == 0 else []
    return pids[0] if pids else None


def report_once_serving(body):
    handoff = body.get("handoff") or {}
    say(
        f"serving generation={handoff.get('generation')} slot={handoff.get('slot')} "
        f"digest={handoff.get('manifest_digest')} uptime={uptime():.2f}"
    )
    code, out = run(APPLIANCE, "verify", "/var/lib/appliance", "--deep", "--json")
    try:
        report = json.loads(out)
        bad = [
            f"{c.get('slot')}{c.get('generation')}:{c.get('error_class')}"
            for c in report.get("checkpoints", [])
            if not c.get("ok")
        ]
        problems = [str(p)[:120] for p in report.get("problems", [])]
    except ValueError:
        bad, problems = ["unparsed"], [out[:200]]
    say(f"verify rc={code} bad={','.join(bad) or '-'} problems={'|'.join(problems).replace(' ', '_') or '-'}")
    code, out = run("systemctl", "--failed", "--no-legend", "--plain")
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    say(f"failed-units count={len(names)} names={','.join(names) or '-'}")
    code, out = run("systemctl", "show", "-p", "NRestarts", "--value", "appliance-supervisor.service")
    say(f"supervisor nrestarts={out.strip() or '-'}")
    _, state = run("systemctl", "show", "-p", "ActiveState", "--value", "appliance-usbmount.service")
    _, restarts = run("systemctl", "show", "-p", "NRestarts", "--value", "appliance-usbmount.service")
    sock = os.path.exists("/run/appliance/usbmount.sock")
    say(f"usbmount state={state.strip() or '-'} nrestarts={restarts.strip() or '-'} socket={int(sock)}")
    code, out = run("journalctl", "-o", "json", "-n", "1", f"MESSAGE_ID={BOOT_SERVING_ID}")
    try:
        entry = json.loads(out.splitlines()[-1])
        fields = sorted(k for k in entry if k.startswith("APPLIANCE_"))
        say(f"journal boot.serving message_id={entry.get('MESSAGE_ID')} fields={','.join(fields)}")
    except (ValueError, IndexError):
        say("journal boot.serving message_id=- fields=-")
    report_kek()
    if not os.path.exists(SECURITY_DONE):
        report_security()


def report_kek():
    """An encrypted node's key set-up: store.json, the keyring's KEK provider, the credential's mode and group,
    /dev/tpmrm0 and which of the node's users may open it (docs/image.md §4.4)."""
    try:
        with open("/var/lib/appliance/store.json") as f:
            encrypt = bool(json.load(f).get("encrypt"))
        with open("/var/lib/appliance/keyring.json") as f:
            provider = json.load(f).get("kek", {}).get("provider", "-")
    except (OSError, ValueError):
        encrypt, provider = False, "-"
    if not encrypt:
        return
    cred = "/etc/appliance/store-kek.cred"
    st = os.stat(cred) if os.path.exists(cred) else None
    mode = f"{st.st_mode & 0o777:o}:{grp_name(st.st_gid)}" if st else "-"
    tpm = os.stat("/dev/tpmrm0") if os.path.exists("/dev/tpmrm0") else None
    tss = [u for u in ("appliance-boot", "appliance-serve", "appliance-persist", "appliance-console",
                       "appliance-replicate", "appliance-channel") if "tss" in run("id", "-nG", u)[1].split()]  # fmt: skip
    say(f"kek encrypt=true provider={provider} cred={mode} tpmrm0={f'{tpm.st_mode & 0o777:o}:{grp_name(tpm.st_gid)}' if tpm else '-'} "
        f"tss={','.join(tss) or '-'}")  # fmt: skip


def grp_name(gid):
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def report_recovery():
    """Why the node serves nothing (boot's recovery file), when it is in recovery mode."""
    try:
        with open("/run/appliance/recovery.json") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return
    reason = str(info.get("reason", "-")).replace(" ", "_")
    first = str((info.get("failures") or ["-"])[0]).replace(" ", "_")[:300]
    say(f"recovery reason={reason} first={first}")


def report_security():
    """``systemd-analyze security`` of every appliance unit as loaded (the test harness's own agent excepted)."""
    code, out = run("systemctl", "list-unit-files", "--no-legend", "--plain", "appliance-*.service")
    units = sorted(u for u in {line.split()[0] for line in out.splitlines() if line.split()}
                   if not u.startswith("appliance-vm-"))  # the harness's own units  # fmt: skip
    t0 = time.monotonic()
    code, out = run("systemd-analyze", "security", "--no-pager", *units, timeout=600)
    found = EXPOSURE.findall(out)
    for unit, level, verdict in found:
        say(f"security unit={unit} exposure={level} verdict={verdict}")
    say(f"security-done rc={code} units={len(units)} rated={len(found)} seconds={time.monotonic() - t0:.1f}")
    os.makedirs(os.path.dirname(SECURITY_DONE), exist_ok=True)
    with open(SECURITY_DONE, "w") as f:
        f.write(out)


class Usb:
    """What the USB flow (its own thread) and the main loop share."""

    def __init__(self):
        self.paused = threading.Event()  # no adaptation: the node is taken into service
        self.unchanged = 0  # how often the service reported its state unchanged while paused
        self.force_report = threading.Event()  # report `serving` again (after the restart)
        self.present = False


def crash_kernel():
    """Hang the whole node: the kernel crashes and, with panic=0, stays halted (nothing pings the watchdog)."""
    with open("/sys/class/watchdog/watchdog0/identity") as f:
        identity = f.read().strip()
    with open("/sys/class/watchdog/watchdog0/timeout") as f:
        timeout = f.read().strip()
    with open("/sys/class/watchdog/watchdog0/state") as f:
        state = f.read().strip()
    with open("/proc/sys/kernel/panic") as f:
        panic = f.read().strip()
    _, runtime = run("systemctl", "show", "-p", "RuntimeWatchdogUSec", "--value")
    fd = os.open(KERNEL_HUNG, os.O_WRONLY | os.O_CREAT, 0o600)  # once per node, durable before the crash
    os.fsync(fd)
    os.close(fd)
    os.sync()
    say(f"kernel-hang identity={identity.replace(' ', '_')} timeout={timeout} state={state} panic={panic} "
        f"runtime_watchdog={runtime.strip()} uptime={uptime():.2f}")  # fmt: skip
    time.sleep(1)
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("c")


def main():
    with open("/proc/cmdline") as f:
        cmdline = f.read().split()
    hang_persist = "vmtest.hang_persist=1" in cmdline
    hang_kernel = "vmtest.hang_kernel=1" in cmdline and not os.path.exists(KERNEL_HUNG)
    say(f"up uptime={uptime():.2f}")
    events = Events()
    serving = False
    hung = False
    rng = random.Random(os.getpid())
    adapt_ok = True
    diagnosed = False
    last_status = time.monotonic()
    usb = Usb()
    while True:
        for e in events.new():
            fields = e.get("fields", {})
            if e.get("event") == "state.unchanged" and usb.paused.is_set():
                usb.unchanged += 1
            if e.get("event") == "persist.committed":
                say(f"committed generation={fields.get('generation')} slot={fields.get('slot')}")
                if hang_persist and not hung and (pid := persist_pid()):
                    os.kill(pid, signal.SIGSTOP)
                    hung = True
                    say(f"persist-frozen pid={pid} uptime={uptime():.2f}")
                if hang_kernel:
                    crash_kernel()
            elif e.get("event") == "outbox.rejected" and not diagnosed:
                diagnosed = True  # once: the outbox's and the persist user's view, to explain the refusal
                say(f"event name=outbox.rejected problem={fields.get('problem')!r:.600}")
                for argv in (
                    ("ls", "-lan", "/var/lib/appliance-outbox"),
                    ("id", "appliance-persist"),
                    ("getfacl", "-n", "/var/lib/appliance-outbox"),
                    ("pgrep", "-a", "-u", "appliance-serve"),
                ):
                    code, out = run(*argv)
                    say(f"diag {' '.join(argv)} rc={code} " + out.replace(chr(10), " | ")[:600])
            else:
                brief = " ".join(f"{k}={v}" for k, v in sorted(fields.items()) if not isinstance(v, (dict, list)))
                say(f"event name={e.get('event')} {brief.replace(chr(10), ' ')[:300]}")
        if not serving and time.monotonic() - last_status > 30:
            last_status = time.monotonic()
            code, out = run("systemctl", "is-active", "appliance-supervisor", "appliance-boot")
            say(f"status units={','.join(out.split())} uptime={uptime():.0f}")
            report_recovery()
        if usb.force_report.is_set():
            usb.force_report.clear()
            serving = False
        present = bool(usbcheck.disks())
        if present != usb.present:
            usb.present = present
            if present and serving:
                threading.Thread(target=usbcheck.run_flow, args=(say, usb), daemon=True).start()
            elif not present:
                body = ready() or {}
                say(f"usb-removed phase={body.get('phase', '-')} "
                    f"generation={(body.get('handoff') or {}).get('generation', '-')}")  # fmt: skip
        if not serving:
            body = ready()
            if body is not None:
                serving = True
                report_once_serving(body)
        elif adapt_ok and not usb.paused.is_set():
            x = [[rng.uniform(-1, 1) for _ in range(16)] for _ in range(4)]
            y = [[rng.uniform(-1, 1) for _ in range(4)] for _ in range(4)]
            try:
                call("/v1/adapt", {"inputs": x, "targets": y})
            except Exception as exc:
                if ready() is None:
                    serving = False  # the service restarted: report again once it serves
                else:
                    adapt_ok = False
                    say(f"adapt unavailable: {exc!r:.100}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
