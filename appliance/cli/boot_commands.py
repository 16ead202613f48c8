"""The supervised-lifecycle commands: boot, serve, persist, guard, seed.

Each parses ``--config NODE.json``, builds the objects one operation needs, runs it and
returns an exit code. ``serve``, ``persist`` and ``guard`` are long-running and are started by
supervisord; ``boot`` by systemd (or the guard). Heavy imports (torch, uvicorn) happen inside
the commands that need them, so ``appliance boot`` stays cheap.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.cli.main import add_json
from appliance.cli.output import Output, human_bytes
from appliance.errors import ApplianceError, LockedError, StoreExistsError
from appliance.events import EventLog
from appliance.format.handoff import Phase, ServiceReport
from appliance.format.inbox import import_exit_code
from appliance.format.shown import a_or_an
from appliance.node.config import NodeConfig, load_config
from appliance.node.identity import open_node_store
from appliance.node.rundir import RunDir

if TYPE_CHECKING:
    from appliance.store.store import Store


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, metavar="NODE.json", help="node configuration")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("boot", help="choose, restore, canary-check and serve the newest good checkpoint")
    add_config(p)
    p.add_argument("--wait-supervisor", type=float, default=30.0, metavar="S", help="seconds to wait for supervisord")
    p.add_argument("--remote", type=Path, metavar="REMOTE.json",
                   help="second site to restore from when no local checkpoint serves (default: remote.json "
                        "beside NODE.json, if present)")  # fmt: skip
    add_json(p)
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("serve", help="the model service (started by supervisord with boot's handoff)")
    add_config(p)
    p.set_defaults(func=cmd_serve, json=False)

    p = sub.add_parser("persist", help="the persistence watchdog: commit the service's state exports")
    add_config(p)
    p.add_argument("--once", action="store_true", help="process the outbox once and exit (on-demand persist)")
    p.add_argument("--export", action="store_true", help="with --once: ask the service for an export first")
    p.add_argument("--remote", type=Path, metavar="REMOTE.json",
                   help="the fleet channel whose staged releases (node.json channel_inbox) are imported "
                        "(default: remote.json beside NODE.json)")  # fmt: skip
    add_json(p)
    p.set_defaults(func=cmd_persist)

    p = sub.add_parser("guard", help="supervisord event listener (speaks the listener protocol on stdout)")
    add_config(p)
    p.set_defaults(func=cmd_guard, json=False)

    p = sub.add_parser("seed", help="commit a fresh state of the configured model (first checkpoint of a node)")
    add_config(p)
    p.add_argument("--force", action="store_true",
                   help="commit the factory state even though the store already holds checkpoints (it becomes the "
                        "newest generation, served at the next boot)")  # fmt: skip
    add_json(p)
    p.set_defaults(func=cmd_seed)


def cmd_boot(args: argparse.Namespace, out: Output) -> int:
    from appliance.boot.control import SupervisorControl
    from appliance.boot.sequence import BootContext, boot, recover_early
    from appliance.boot.trial import ControlProbe
    from appliance.node.floor import open_floor
    from appliance.store.bootstate import SlotStates

    config = load_config(args.config)
    control = SupervisorControl(config.supervisor_socket)
    control.wait_ready(args.wait_supervisor)
    events, run = EventLog(config.event_log, "boot"), RunDir(config.run_dir)
    try:
        store = open_node_store(config)
        floor = open_floor(config)
    except ApplianceError as exc:
        recover_early(config, run, control, events, f"the store cannot be opened: {exc.problem}")
        raise
    ctx = BootContext(config=config, run=run, control=control, probe=ControlProbe(config.control_socket), events=events,
                      store=store, states=SlotStates(store.storage, store.limits), floor=floor,
                      second_site=_second_site(args, store, events))  # fmt: skip
    outcome = boot(ctx)
    out.result(outcome.to_dict(), _boot_text)
    return outcome.exit_code


def _second_site(args: argparse.Namespace, store: Any, events: EventLog) -> Any:
    """The object-store replica as boot's second site, when ``remote.json`` asks for it."""
    path: Path = args.remote or args.config.parent / "remote.json"
    if args.remote is None and not path.exists():
        return None
    from appliance.remote.config import load_remote
    from appliance.remote.second_site import SecondSite

    try:
        remote = load_remote(path)
    except ApplianceError as exc:  # a broken remote.json must not stop a local boot
        events.emit("remote.restore_failed", site=str(path), error=type(exc).__name__, problem=exc.problem)
        return None
    return SecondSite(store, remote, events) if remote.restore_at_boot else None


def _boot_text(d: dict[str, Any]) -> str:
    lines = [f"  skipped {f}" for f in d["failures"]]
    s = d["stages"]
    if d["recovery"]:
        lines.append(f"RECOVERY MODE: {d['recovery']} (nothing is served)")
        return "\n".join(lines)
    serving, r = d["serving"], d["restore"] or {}
    lines.append(
        f"serving slot {serving['slot']} generation {serving['generation']} "
        f"(manifest {serving['manifest_digest'][:12]}); boot to serving {s['total_s']:.2f} s"
    )
    if "signer_role" in serving:
        lines.append(f"  signed by {a_or_an(str(serving['signer_role']))} key; release base generation "
                     f"{serving['release_base']}")  # fmt: skip
    lines.append("  stages: " + ", ".join(f"{k.removesuffix('_s')} {v:.3f}" for k, v in s.items() if k != "total_s"))
    if r:
        lines.append(
            f"  restore: {human_bytes(r['raw_bytes'])} in {r['frames']} frames, every frame hashed, "
            f"{r['seconds']:.3f} s ({r['gb_per_s']:.2f} GB/s, {r['workers']} workers)"
        )
    return "\n".join(lines + replay_lines(d.get("replay")))


def replay_lines(replay: dict[str, Any] | None) -> list[str]:
    """The journal replay in boot's (and boot-status's) text: how far it got, and loudly where it stopped."""
    if not replay:
        return []
    cut = f"; {replay['cut']} torn or corrupt tail(s) cut" if replay.get("cut") else ""
    lines = [f"  journal replay: {replay['replayed']} steps replayed (to index {replay['last_index']}){cut}"]
    stop = replay.get("stopped")
    if stop:
        lines.append(f"  JOURNAL REPLAY STOPPED at record {stop['index']} of {stop['segment']} ({stop['kind']}): "
                     f"{stop['detail']}")  # fmt: skip
    if stop or replay.get("set_aside_records"):
        lines.append(f"  {replay['set_aside_records']} journaled step records ({replay['set_aside_bytes']} bytes) "
                     f"set aside in {replay.get('retired_dir', 'JOURNAL/retired')}: acknowledged steps the served "
                     "state does not hold")  # fmt: skip
    return lines


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    started = time.monotonic()
    config = load_config(args.config)
    run = RunDir(config.run_dir)
    # First sign of life, before torch is imported: a crash after this is attributable to this pid.
    run.write_report(ServiceReport(os.getpid(), Phase.STARTING, run.read_handoff(), _utc()))
    from appliance.service.early import start_early_restore

    early = start_early_restore(config, run)  # model_init meta: restore while torch loads (issue 16)
    from appliance.service.server import serve

    return serve(config, started, early)


def cmd_persist(args: argparse.Namespace, out: Output) -> int:
    from appliance.node.priority import lower_priority

    config = load_config(args.config)
    # Before any thread exists (every thread inherits it) and before torch's import, which would
    # otherwise compete at full priority with the service's start at power-on (issue 16).
    priority = lower_priority(config.persist_nice)
    from appliance.persist.committer import Committer
    from appliance.persist.daemon import PersistDaemon

    print(f"appliance persist: running at {priority.describe()}", file=sys.stderr, flush=True)
    events = EventLog(config.event_log, "persist")
    remote: Path = args.remote or args.config.parent / "remote.json"  # the channel the inbox belongs to
    daemon = PersistDaemon(Committer(config, events), events, remote_path=remote)
    if not args.once:
        _stop_on_signals(daemon.stop, daemon.wake)
        daemon.run()
        return 0
    if args.export and not daemon.request_export():
        out.note("the service did not export (is it serving?); committing what is in the outbox")
    result = daemon.process()
    channel = daemon.inbox.process()
    data = {"committed": result.to_dict() if result else None, "channel_import": channel}
    out.result(data, _persist_text)
    return import_exit_code(result is not None, channel)  # a refused import is the error's code (design §11.6)


def _persist_text(d: dict[str, Any]) -> str:
    channel = d["channel_import"]
    lines = [_committed_text(d["committed"], quiet=channel["status"] != "none")]
    if channel["status"] in ("imported", "already"):
        done = f"imported into slot {channel['slot']}" if channel["imported"] else "already in the store"
        lines.append(f"channel {channel['channel']}: generation {channel['generation']} (sequence "
                     f"{channel['sequence']}) from the channel inbox {done}")  # fmt: skip
    elif channel["status"] in ("refused", "failed"):
        retry = " (retried with backoff)" if channel["status"] == "failed" else ""
        lines.append(f"channel import {channel['status']}{retry}: {channel['error']} ({channel['exit_code']}): "
                     f"{channel['problem']}\n  remedy: {channel['remedy']}")  # fmt: skip
    elif channel["status"] != "none":
        lines.append(f"channel import {channel['status']}: {channel.get('reason', 'retried later')}")
    return "\n".join(line for line in lines if line)


def _committed_text(c: dict[str, Any] | None, quiet: bool = False) -> str:
    if c is None:
        if quiet:
            return "outbox: nothing committed"
        return "nothing committed (empty outbox, invalid exports or commits deferred; see `appliance events`)"
    return f"committed generation {c['generation']} into slot {c['slot']} ({human_bytes(c['written_bytes'])} written)"


def _stop_on_signals(stop: threading.Event, wake: threading.Event) -> None:
    def handler(signum: int, frame: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_guard(args: argparse.Namespace, out: Output) -> int:
    from appliance.boot.control import SupervisorControl
    from appliance.boot.guard import Guard, boot_subprocess
    from appliance.store.bootstate import SlotStates

    config = load_config(args.config)
    store = open_node_store(config)
    guard = Guard(
        config,
        SlotStates(store.storage, store.limits),
        SupervisorControl(config.supervisor_socket),
        EventLog(config.event_log, "guard"),
        boot_subprocess(args.config.resolve()),
    )
    guard.serve_forever()
    return 0


def cmd_seed(args: argparse.Namespace, out: Output) -> int:
    config = load_config(args.config)
    data = seed(config, force=args.force, config_path=args.config)
    out.result(data, lambda d: f"seeded: {_committed_text(d)}")
    return 0


def seed(config: NodeConfig, *, force: bool = False, config_path: Path | None = None) -> dict[str, Any]:
    """Commit the configured model's fresh state (with its canary) as a checkpoint of this node.

    Refused (``StoreExistsError``, nothing written) when the store already holds a committed generation
    in either slot, unless ``force``: the factory state would become the newest generation and
    supersede an adapted one at the next boot.
    """
    from appliance.persist.committer import Committer
    from appliance.service import export, loader

    if not force:
        refuse_if_seeded(config, config_path)  # before the model is built or anything is written
    model = loader.build(config.model).model  # the factory's fresh state, initialised
    snapshot = export.capture(model, threading.Lock())
    committer = Committer(config, EventLog(config.event_log, "cli"))
    with committer.run.commit_guard() as free:
        if not free:
            raise LockedError("a boot is running; seed again when it has finished")
        if not force:
            refuse_if_seeded(config, config_path)  # again: something may have committed meanwhile
        written = export.write(snapshot, config.outbox, config.model, None)
        result = committer.commit_file(written.path, produced_here=True)
        assert result is not None  # produced_here: always committed
        return result.to_dict()


def refuse_if_seeded(config: NodeConfig, config_path: Path | None = None) -> None:
    """``StoreExistsError`` naming the newest committed generation, if the store holds any (either slot).

    Every commit record counts, also one that does not verify: a store in recovery mode holds
    checkpoints too, and replacing them with the factory state is the operator's decision (``--force``).
    """
    from appliance.store.discovery import scan

    store = open_node_store(config)
    records = scan(store.storage, store.limits).records
    if not records:
        return
    newest = max(records, key=lambda r: (r.generation, r.slot))
    cfg = str(config_path) if config_path is not None else "NODE.json"
    anyway = f"to commit the factory state as a new generation anyway: `appliance seed --config {cfg} --force`"
    if _any_verifies(store):
        remedy = (
            f"nothing was written. To serve what is there: `appliance boot --config {cfg}`; to go back to an "
            f"earlier checkpoint: `appliance log {config.store}`, then `appliance tech rollback GEN --config "
            f"{cfg}` (and `appliance pin {config.store} GEN` keeps one); {anyway}"
        )
    else:  # trial 4: "serve what is there" pointed at a boot that can only enter recovery mode
        remedy = (
            f"nothing was written. None of its committed checkpoints verifies (`appliance verify {config.store}` "
            f"says why), so boot would enter recovery mode; to bring a good checkpoint: `appliance import "
            f"{config.store} SRC` or `appliance remote pull --config {cfg} --remote REMOTE.json`; {anyway}"
        )
    raise StoreExistsError(
        f"the store {config.store} is already seeded: its newest committed generation is {newest.generation} "
        f"(slot {newest.slot}); seeding again would commit the model's factory state as a newer generation, "
        "which boot would then serve instead",
        remedy=remedy,
    )


def _any_verifies(store: Store) -> bool:
    """Whether boot would find a committed checkpoint that verifies (the newest-first selection)."""
    try:
        store.select()
    except ApplianceError:
        return False
    return True


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
