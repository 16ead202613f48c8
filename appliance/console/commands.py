"""CLI verbs of the recovery console: ``appliance tech ACTION`` (each console action) and ``appliance console``.

Owns: argument grammar and rendering of ``appliance tech verify | scrub | slot-reset SLOT |
rollback GENERATION | restart-service | diagnostics --out FILE`` (``--config NODE.json``,
``--technician NAME``, ``--json``; the web console runs these same verbs) and ``appliance
console serve | passwd NAME | setup-code | fingerprint``. Does not own what the actions do
(``operations``) or the web console (``app``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.cli.boot_commands import add_config
from appliance.cli.main import add_json
from appliance.cli.output import Output
from appliance.errors import ConsoleAccessError, UsageError
from appliance.format.commit import SLOT_NAMES
from appliance.node.config import load_config

PRODUCTION_CONFIG = Path("/etc/appliance/node.json")
PRODUCTION_STATE = Path("/var/lib/appliance-console")
DEFAULT_LISTEN = "127.0.0.1:8471"


def _technician() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tech = sub.add_parser("tech", help="technician actions (the recovery console's actions, for SSH or serial)")
    tsub = tech.add_subparsers(dest="tech_action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        p = tsub.add_parser(name, help=text)
        add_config(p)
        p.add_argument("--technician", default=None, help="name written to the event log (default: login name)")
        add_json(p)
        return p

    action("verify", "verify every checkpoint of both slots now, deep").set_defaults(func=cmd_tech)
    p = action("scrub", "scrub now: re-verify frames, repair from the other slot")
    p.add_argument("--max-duration", type=float, default=60.0, metavar="S")
    p.set_defaults(func=cmd_tech)
    p = action("slot-reset", "clear a slot's BAD mark (refused if it is not BAD)")
    p.add_argument("slot", choices=SLOT_NAMES)
    p.set_defaults(func=cmd_tech)
    p = action("rollback", "re-commit an older generation (at or above the floor, verified) and boot it")
    p.add_argument("generation", type=int, metavar="GENERATION")
    p.add_argument("--no-restart", action="store_true", help="commit only; the next boot serves it")
    p.set_defaults(func=cmd_tech)
    action("restart-service", "run the boot sequence again (restore, canary, admit)").set_defaults(func=cmd_tech)
    action("usb-list", "USB sticks detected now (pyudev: ID_BUS=usb, known file system)").set_defaults(func=cmd_tech)
    p = action("usb-scan", "mount a stick read-only and list its checkpoints (trusted? importable?)")
    p.add_argument("device", metavar="DEVICE")
    p.set_defaults(func=cmd_tech)
    p = action("import", "import a checkpoint from a USB stick (verified; committed only when complete)")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("generation", type=int, metavar="GENERATION")
    p.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stderr (for the console)")
    p.set_defaults(func=cmd_tech)
    p = action("diagnostics", "write a diagnostics bundle (never keys or weights)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.tar.gz")
    p.set_defaults(func=cmd_tech)
    p = action("diagnostics-usb", "write a diagnostics bundle onto a USB stick (mounted read-write for this only)")
    p.add_argument("device", metavar="DEVICE")
    p.set_defaults(func=cmd_tech)

    _register_console(sub)


def _register_console(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    con = sub.add_parser("console", help="the web recovery console: serve it, provision technicians, TLS fingerprint")
    csub = con.add_subparsers(dest="console_action", required=True, metavar="ACTION")
    p = csub.add_parser("serve", help="run the web console (supervisord runs it as appliance-console)")
    add_config(p)
    _state(p)
    listen_help = f"address to listen on, repeatable (default {DEFAULT_LISTEN}); TLS on non-loopback"
    p.add_argument("--listen", action="append", metavar="HOST:PORT", help=listen_help)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME", help="extra Host name to accept")
    p.add_argument("--tls", action="store_true", help="TLS on loopback too (always on for other addresses)")
    p.add_argument("--remote", type=Path, metavar="REMOTE.json", help="replicator config: adds replication metrics")
    p.add_argument("--actions", choices=("auto", "socket", "local"), default="auto",
                   help="how actions run: socket = the privileged sides' sockets (production), local = child "
                   "processes of the console's own user (development); auto = socket when "
                   "RUN/actions.sock exists")  # fmt: skip
    p.set_defaults(func=cmd_serve, json=False)
    p = csub.add_parser("actiond", help="serve technician actions for the console (persist side or boot side)")
    add_config(p)
    p.add_argument("--backend", choices=("persist", "boot"), required=True)
    p.set_defaults(func=cmd_actiond, json=False)
    p = csub.add_parser("usbmount", help="the root USB mount helper (mounts sticks for the persist side only)")
    add_config(p)
    p.set_defaults(func=cmd_usbmount, json=False)
    p = csub.add_parser("passwd", help="provision or change a technician's password (argon2id)")
    add_config(p)
    _state(p)
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add_json(p)
    p.set_defaults(func=cmd_passwd)
    p = csub.add_parser("setup-code", help="print the one-time setup code (node's local console, as root)")
    add_config(p)
    _state(p)
    add_json(p)
    p.set_defaults(func=cmd_setup_code)
    p = csub.add_parser("fingerprint", help="SHA-256 fingerprint of the console's TLS certificate")
    add_config(p)
    _state(p)
    p.add_argument("--create", action="store_true", help="create the certificate if it does not exist yet")
    add_json(p)
    p.set_defaults(func=cmd_fingerprint)


def _state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help=f"credentials, certificate, bundles (default: {PRODUCTION_STATE} for the production "
                   "node.json, else DIR_OF_NODE_JSON/console)")  # fmt: skip


def state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    config = Path(args.config).resolve()
    return PRODUCTION_STATE if config == PRODUCTION_CONFIG else config.parent / "console"


def cmd_tech(args: argparse.Namespace, out: Output) -> int:
    from appliance.console import operations as ops

    config = load_config(args.config)
    who = args.technician or _technician()
    path = Path(args.config).resolve()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "verify": lambda: ops.verify(config, who),
        "scrub": lambda: ops.scrub(config, who, args.max_duration),
        "slot-reset": lambda: ops.slot_reset(config, who, args.slot, now),
        "rollback": lambda: ops.rollback(config, who, args.generation, path, restart=not args.no_restart),
        "restart-service": lambda: ops.restart_service(config, who, path),
        "diagnostics": lambda: ops.diagnostics(config, who, args.out),
        "usb-list": ops.usb_list,
        "usb-scan": lambda: ops.usb_scan(config, args.device),
        "diagnostics-usb": lambda: ops.diagnostics_usb(config, who, args.device),
    }
    name = args.tech_action
    if name == "import":
        with out.progress(None, "import") as bar:
            data = ops.usb_import(config, who, args.device, args.generation, _progress(args.progress_json, bar))
    elif name in runs:
        data = runs[name]()
    else:
        raise ops.refuse_unknown(name)
    out.result(data, lambda d: _tech_text(name, d))
    return 1 if name == "verify" and not data.get("ok") else 0


def _progress(as_json: bool, bar: Any) -> Any:
    def report(done: int, total: int) -> None:
        if as_json:
            sys.stderr.write(json.dumps({"progress": {"done": done, "total": total}}) + "\n")
            sys.stderr.flush()
        elif bar is not None:
            bar(done - report.last)  # type: ignore[attr-defined]
        report.last = done  # type: ignore[attr-defined]

    report.last = 0  # type: ignore[attr-defined]
    return report


def _tech_text(name: str, d: dict[str, Any]) -> str:
    if name == "usb-list":
        sticks = [f"{s['device']} {s['fstype']} {s['label']} {s['vendor']} {s['model']}" for s in d["sticks"]]
        return "\n".join(sticks) or "no USB stick with a known file system"
    if name == "usb-scan":
        rows = [
            f"generation {c['generation']} {c['model']} signed by {','.join(k[:12] for k in c['signers'])}: "
            + ("importable" if c["importable"] else c["problem"] or "already committed")
            for c in d["checkpoints"]
        ]
        return "\n".join(rows) or "no checkpoints on this stick"
    if name == "verify":
        rows = [f"{c['slot']}/gen {c['generation']}: {'ok' if c['ok'] else 'FAILED ' + str(c['error'])}"
                for c in d["checkpoints"]]  # fmt: skip
        return "\n".join([*rows, str(d["summary"])])
    return str(d.get("summary") or "\n".join(f"{k}: {v}" for k, v in d.items()))


def cmd_passwd(args: argparse.Namespace, out: Output) -> int:
    from appliance.console.credentials import Technicians, check_name, check_password
    from appliance.events import EventLog

    check_name(args.name)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for technician {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    check_password(password)
    Technicians(state_dir(args)).set(args.name, password)
    config = load_config(args.config)
    EventLog(config.event_log, "console").emit(
        "console.technician_set", technician=args.name, how="appliance console passwd"
    )
    out.result(
        {"technician": args.name, "state_dir": str(state_dir(args))}, lambda d: f"technician {d['technician']} set"
    )
    return 0


def cmd_setup_code(args: argparse.Namespace, out: Output) -> int:
    from appliance.console.credentials import Technicians, read_setup_code

    d = state_dir(args)
    code = read_setup_code(d)
    if code is None or not Technicians(d, Path(args.config).resolve().parent / "technicians.json").empty():
        raise ConsoleAccessError("no setup code is pending (a technician exists, or the console has not started)")
    out.result({"code": code}, lambda x: f"one-time setup code: {x['code']}")
    return 0


def cmd_fingerprint(args: argparse.Namespace, out: Output) -> int:
    from appliance.console import tls

    if args.create:
        tls.ensure_certificate(state_dir(args), [])
    out.result({"fingerprint": tls.fingerprint(state_dir(args))}, lambda d: d["fingerprint"])
    return 0


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen takes HOST:PORT, got {value!r:.60}")
    return host, int(port)


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from appliance.console.server import serve

    listen = [parse_listen(v) for v in (args.listen or [DEFAULT_LISTEN])]
    return serve(Path(args.config).resolve(), state_dir(args), listen, args.allow_host, force_tls=args.tls,
                 remote=args.remote, actions=args.actions)  # fmt: skip


def cmd_actiond(args: argparse.Namespace, out: Output) -> int:
    from appliance.console.actiond import ActionServer

    ActionServer(Path(args.config).resolve(), args.backend).serve_forever()
    return 0


def cmd_usbmount(args: argparse.Namespace, out: Output) -> int:
    from appliance.console.usbmount import MountServer

    if os.geteuid() != 0:
        raise UsageError("the USB mount helper runs as root (supervisord program usbmount)")
    MountServer(Path(args.config).resolve()).serve_forever()
    return 0
