"""Node commands: create a development node, show boot state, read events, reset a slot.

``node-init`` writes everything a node needs into one directory (signing key, store, node.json,
supervisord.conf) so the supervised lifecycle runs on a fresh machine:

    appliance node-init /tmp/node && appliance seed --config /tmp/node/node.json
    supervisord -c /tmp/node/supervisord.conf
    appliance boot --config /tmp/node/node.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.boot.privileges import render_tmpfiles
from appliance.boot.supervisord_conf import SupervisordLayout, render
from appliance.cli.boot_commands import add_config, replay_lines
from appliance.cli.main import add_json
from appliance.cli.output import Output
from appliance.cli.store_commands import config_from_options
from appliance.errors import StoreExistsError, UsageError
from appliance.events import read_events
from appliance.format import slotstate as ss
from appliance.format.commit import SLOT_NAMES
from appliance.journal.keyfile import create_journal_key
from appliance.node.config import MODEL_INIT, NodeConfig, load_config
from appliance.node.floor import FileFloor, FloorUnreadableError, open_floor
from appliance.node.identity import open_node_store
from appliance.node.rundir import RunDir
from appliance.signing import SigningKey
from appliance.store.bootstate import SlotStates
from appliance.store.config import DEFAULT_FRAME_SIZE
from appliance.store.store import Store

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes
# Owner-only keys, group-readable state, nothing for others (production: systemd/tmpfiles.d).
NODE_DIR_MODES = {".": 0o750, "keys": 0o700, "run": 0o750, "outbox": 0o750, "log": 0o750}
USER_DIR_MODES = {"floor": 0o700, "supervisor": 0o710}  # node-init --users: then tmpfiles sets owners


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "node-init", help="create a development node directory (key, store, node.json, supervisord.conf)"
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--model", default=NodeConfig.model, help="model entry point (default: %(default)s)")
    p.add_argument("--model-id", help="store compatibility string (default: the entry point)")
    p.add_argument("--port", type=int, default=NodeConfig.port)
    p.add_argument("--frame-size", type=int, default=DEFAULT_FRAME_SIZE)
    p.add_argument("--persist-interval", type=float, default=NodeConfig.persist_interval, metavar="S")
    p.add_argument("--persist-nice", type=int, default=NodeConfig.persist_nice, help="watchdog niceness 0..19")
    p.add_argument("--max-boot-attempts", type=int, default=NodeConfig.max_boot_attempts)
    p.add_argument("--ready-timeout", type=float, default=NodeConfig.ready_timeout, metavar="S")
    p.add_argument(
        "--model-init",
        choices=MODEL_INIT,
        default=NodeConfig.model_init,
        help="meta: skip the factory's weight initialisation at boot, the restore fills every tensor",
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment for supervised programs"
    )
    p.add_argument(
        "--users",
        action="store_true",
        help="production privileges (root): each program as its own user, owners and modes applied with "
        "systemd-tmpfiles (create the users first: systemd-sysusers systemd/sysusers.d/appliance.conf)",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter the programs run with (default: this one)")
    p.add_argument(
        "--console", metavar="HOST:PORT", help="also run the recovery console under supervisord on this address"
    )
    p.add_argument(
        "--journal",
        action="store_true",
        help="journal every adaptation step before acknowledging it (DIR/journal, key DIR/keys/journal.key): "
        "a power cut loses no acknowledged step",
    )
    add_json(p)
    p.set_defaults(func=cmd_node_init)

    p = sub.add_parser("boot-status", help="slot states, anti-rollback floor, what is served, recovery reason")
    add_config(p)
    add_json(p)
    p.set_defaults(func=cmd_boot_status)

    p = sub.add_parser("events", help="the structured event log (newest last)")
    add_config(p)
    p.add_argument("--tail", type=int, default=30, metavar="N")
    p.add_argument("--event", action="append", metavar="NAME", help="only events with this name (repeatable)")
    add_json(p)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("slot-reset", help="technician: clear a slot's BAD mark so its checkpoint is tried again")
    add_config(p)
    p.add_argument("slot", choices=SLOT_NAMES)
    add_json(p)
    p.set_defaults(func=cmd_slot_reset)


def cmd_node_init(args: argparse.Namespace, out: Output) -> int:
    root: Path = args.dir.resolve()
    if (root / "node.json").exists():
        raise StoreExistsError(f"{root} already holds a node")
    if args.users and os.geteuid() != 0:
        raise UsageError("node-init --users needs root (it gives each directory its owner)")
    store_config = config_from_options(model=args.model_id or args.model, frame_size=args.frame_size)  # before writes
    own = "supervisor" if args.users else "run"  # with users, supervisord's socket is boot's alone
    config = NodeConfig(
        store="store", model=args.model, run_dir="run", outbox="outbox", event_log="log/events.jsonl",
        signing_key="keys/device.key", floor_file="floor/floor.json" if args.users else "floor.json",
        supervisor_socket=f"{own}/supervisor.sock",
        port=args.port, persist_interval=args.persist_interval, max_boot_attempts=args.max_boot_attempts,
        ready_timeout=args.ready_timeout, model_init=args.model_init, persist_nice=args.persist_nice,
        journal_dir="journal" if args.journal else "",
        channel_inbox="channel-inbox" if args.users else "",  # as production: the channel program only stages
    )  # fmt: skip
    absolute = config.resolved(root)
    if len(absolute.supervisor_socket) > SOCKET_PATH_MAX:
        raise UsageError(f"{absolute.supervisor_socket} is too long for a unix socket; choose a shorter DIR")
    root.mkdir(mode=NODE_DIR_MODES["."], parents=True, exist_ok=True)
    for sub, mode in (NODE_DIR_MODES | (USER_DIR_MODES if args.users else {})).items():
        (root / sub).mkdir(mode=mode, exist_ok=True)
        (root / sub).chmod(mode)  # mkdir's mode is filtered by the umask; the node's modes are not
    key = SigningKey.generate()
    key.save(absolute.signing_key)
    Path(absolute.signing_key).chmod(0o400)  # read by the persistence watchdog only, never rewritten
    Store.init(absolute.store, [key.public], store_config)
    FileFloor(absolute.floor_file).raise_to(0)  # provisioned: from now on a missing floor file fails closed
    if args.journal:  # the service's user must own it: with --users tmpfiles hands it to appliance-serve
        create_journal_key(absolute.journal_key_file())
        Path(absolute.journal_dir).mkdir(mode=0o700, exist_ok=True)
    (root / "node.json").write_bytes(config.to_bytes())
    layout = SupervisordLayout(
        config=str(root / "node.json"),
        appliance=f"{args.python} -m appliance.cli.main",
        socket=absolute.supervisor_socket,
        log_dir=str(root / "log"),
        pidfile=str(root / own / "supervisord.pid"),
        environment=",".join(_env_pair(e) for e in args.env),
        users=args.users,
        console=args.console is not None,  # recovery console (issue 14): state in DIR/console
        console_state=str(root / "console"),
        console_listen=(args.console,) if args.console else (),
    )
    (root / "supervisord.conf").write_text(render(layout))
    if args.users:
        apply_tmpfiles(root / "tmpfiles.conf", render_tmpfiles(absolute, node_root=str(root)))
    data = {"dir": str(root), "config": str(root / "node.json"), "supervisord_conf": str(root / "supervisord.conf")}
    out.result(data, lambda d: f"node in {d['dir']}\n  config {d['config']}\n  supervisord -c {d['supervisord_conf']}")
    return 0


def apply_tmpfiles(path: Path, rules: str) -> None:
    """Write ``rules`` to ``path`` and apply them with the real ``systemd-tmpfiles`` (owners, modes, ACLs)."""
    path.write_text(rules)
    tool = shutil.which("systemd-tmpfiles")
    if tool is None:
        raise UsageError("node-init --users needs systemd-tmpfiles", remedy="apt-get install systemd")
    done = subprocess.run([tool, "--create", str(path)], capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    if done.returncode != 0:
        raise UsageError(
            f"systemd-tmpfiles could not apply {path}: {done.stderr.strip()[:400]}",
            remedy="create the node's users first: systemd-sysusers systemd/sysusers.d/appliance.conf",
        )


def _env_pair(item: str) -> str:
    key, sep, value = item.partition("=")
    if not sep or not key.isidentifier() or '"' in value:
        raise UsageError(f"--env takes KEY=VALUE without quotes, got {item!r}")
    return f'{key}="{value}"'


def cmd_boot_status(args: argparse.Namespace, out: Output) -> int:
    config = load_config(args.config)
    data = boot_status(config)
    out.result(data, _status_text)
    return 1 if data["recovery"] else 0


def boot_status(config: NodeConfig) -> dict[str, Any]:
    store = open_node_store(config)
    run = RunDir(config.run_dir)
    slots = {}
    for slot, reading in SlotStates(store.storage, store.limits).read_all().items():
        slots[slot] = reading.state.to_dict() | {"damaged": reading.damaged}
    try:
        floor: int | str = open_floor(config).read()
    except FloorUnreadableError as exc:
        floor = f"unreadable: {exc}"
    handoff, report = run.read_handoff(), run.read_report()
    return {
        "slots": slots,
        "floor": floor,
        "handoff": handoff.to_dict() if handoff else None,
        "service": report.to_dict() if report else None,
        "recovery": run.read_recovery(),
    }


def _status_text(d: dict[str, Any]) -> str:
    lines = []
    for slot, s in d["slots"].items():
        good = f"; proven GOOD: generation {s['good_generation']}" if s["good_generation"] else ""
        why = f" ({s['reason']})" if s["reason"] else ""
        lines.append(f"slot {slot}: {s['state']} generation {s['generation']} attempts {s['attempts']}{why}{good}")
    lines.append(f"anti-rollback floor: {d['floor']}")
    h, svc = d["handoff"], d["service"]
    if h:
        lines.append(f"handoff: slot {h['slot']} generation {h['generation']} (admit {h['admit']})")
    if svc:
        lines.append(f"service: pid {svc['pid']} {svc['phase']}")
        lines.extend(replay_lines(svc.get("replay")))
    if d["recovery"]:
        lines.append(f"RECOVERY MODE: {d['recovery']['reason']}")
        lines.extend(f"  {f}" for f in d["recovery"].get("failures", []))
    return "\n".join(lines)


def cmd_events(args: argparse.Namespace, out: Output) -> int:
    config = load_config(args.config)
    names = frozenset(args.event) if args.event else None
    events = read_events(config.event_log, names)[-args.tail :] if args.tail > 0 else []
    out.result(
        {"events": events},
        lambda d: "\n".join(f"{e['ts']}  {e['component']:<8} {e['event']:<20} {e['message']}" for e in d["events"]),
    )
    return 0


def cmd_slot_reset(args: argparse.Namespace, out: Output) -> int:
    config = load_config(args.config)
    store = open_node_store(config)
    states = SlotStates(store.storage, store.limits)
    state = ss.reset(states.load(args.slot), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    states.write(state)
    out.result(state.to_dict(), lambda d: f"slot {d['slot']} is {d['state']} again (generation {d['generation']})")
    return 0
