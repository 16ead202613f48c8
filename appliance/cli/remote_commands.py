"""``appliance replicate`` (the supervisord program), ``appliance remote status|pull|prune``, ``publish``, ``channel``.

Each command loads ``node.json`` (store, event log, floor) and ``remote.json`` (endpoint, bucket,
device, credentials, keys), calls one function of ``appliance.remote`` and renders the result.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.cli.output import Output, human_bytes
from appliance.errors import ApplianceError, ConfigError
from appliance.events import EventLog
from appliance.node.config import NodeConfig, load_config
from appliance.remote.config import RemoteConfig, load_remote
from appliance.signing import PublicKey, SigningKey

if TYPE_CHECKING:
    from appliance.remote.state import ReplicationState


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, metavar="NODE.json", help="node configuration")
    p.add_argument("--remote", type=Path, required=True, metavar="REMOTE.json", help="object store configuration")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replicate", help="push committed checkpoints to S3-compatible object storage (supervisord)")
    _common(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="one pass, then exit (exit 69 if the upload failed; 18 if the bucket refused the credentials)",
    )
    p.set_defaults(func=cmd_replicate)

    p = sub.add_parser("publish", help="publish a release-signed checkpoint to a fleet channel (operator)")
    p.add_argument("root", type=Path, metavar="ROOT", help="the release store")
    p.add_argument("--remote", type=Path, required=True, metavar="REMOTE.json", help="object store configuration")
    p.add_argument("--channel", required=True, help="channel name (a-z, 0-9, '-')")
    p.add_argument("--key", type=Path, required=True, metavar="RELEASE.key", help="the release signing key")
    p.add_argument("--generation", type=int, metavar="N", help="publish exactly this generation (default: newest)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("channel", help="follow the fleet channel named in remote.json (node)")
    p.add_argument("action", choices=["follow"],
                   help="follow: import the channel's newest release if new (with node.json channel_inbox: stage it "
                        "there for the persistence watchdog, which imports it)")  # fmt: skip
    _common(p)
    p.add_argument("--watch", action="store_true", help="poll every poll_interval seconds until stopped")
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="where the channel heads seen are kept (default: remote.json's state_dir)")  # fmt: skip
    p.add_argument("--if-configured", action="store_true",
                   help="exit 0 at once when remote.json is absent or names no channel (supervisord)")  # fmt: skip
    p.set_defaults(func=cmd_channel)

    p = sub.add_parser("remote", help="the object-store replica: status, pull, prune")
    p.add_argument("action", choices=["status", "pull", "prune"],
                   help="status: replicated/pending/failed; pull: restore; prune: delete old bundles and the blobs "
                        "only they need (docs/design.md §11.7)")  # fmt: skip
    _common(p)
    p.add_argument(
        "--keep",
        type=int,
        default=3,
        metavar="N",
        help="prune: keep the N newest bundles (besides the head's and those at or above the floor)",
    )
    p.add_argument("--dry-run", action="store_true", help="prune: report what would be deleted, delete nothing")
    p.set_defaults(func=cmd_remote)


def _open(args: argparse.Namespace) -> tuple[NodeConfig, RemoteConfig, Any]:
    from appliance.store.bootstate import SlotStates
    from appliance.store.store import Store

    node, remote = load_config(args.config), load_remote(args.remote)
    store = Store.open(node.store, trust_path=node.trust or None)
    store.good_provider = SlotStates(store.storage, store.limits).good_generations
    return node, remote, store


def _head_keys(remote: RemoteConfig) -> list[PublicKey]:
    return [PublicKey.load(p) for p in remote.head_trust]


def cmd_replicate(args: argparse.Namespace, out: Output) -> int:
    from appliance.remote.replicate import Replicator
    from appliance.remote.s3 import ObjectStore
    from appliance.remote.state import StateDir

    node, remote, store = _open(args)
    if not remote.head_key:
        raise ConfigError("remote.json names no head_key: heads must be signed", remedy="set head_key (a keygen key)")
    replicator = Replicator(
        store, ObjectStore(remote, remote.device_prefix), device=remote.device,
        keys=[SigningKey.load(remote.head_key)], state_dir=StateDir(remote.state_dir),
        events=EventLog(node.event_log, "replicate"), retry_base=remote.retry_base, retry_cap=remote.retry_cap,
    )  # fmt: skip
    if args.once:
        outcome = replicator.step(now=True)  # an operator's pass: not deferred by the loop's backoff
        if isinstance(replicator.last_failure, ConfigError):
            raise replicator.last_failure  # credentials or bucket refused: the code and remedy of `remote pull`
        out.result(outcome, lambda d: " ".join(f"{k}={v}" for k, v in d.items()))
        return 69 if outcome["action"] == "failed" else 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    replicator.run(stop, remote.poll_interval)
    return 0


def cmd_remote(args: argparse.Namespace, out: Output) -> int:
    return {"status": _status, "pull": _pull, "prune": _prune}[args.action](args, out)


def _prune(args: argparse.Namespace, out: Output) -> int:
    from appliance.remote.prune import prune_replica
    from appliance.remote.s3 import ObjectStore

    node, remote, store = _open(args)
    floor = _prune_floor(node, args.config)
    state, newest = _queue(remote, store)
    report = prune_replica(
        ObjectStore(remote, remote.device_prefix), head_keys=_head_keys(remote), device=remote.device,
        model=store.config.model, floor=floor, keep=args.keep, dry_run=args.dry_run, pending=state.pending(newest),
        limits=store.limits,
    )  # fmt: skip
    out.result(report.to_dict(), _prune_text)
    return 0


def _prune_floor(node: NodeConfig, config: str) -> int:
    """The floor prune keeps every bundle at or above; unreadable: refused, with the floor's own recovery."""
    from appliance.errors import PruneRefusedError

    return _read_floor(node, PruneRefusedError, "so the bundles a restore may still need are unknown; nothing was "
                       "deleted", "prune", config)  # fmt: skip


def _read_floor(node: NodeConfig, error: type[ApplianceError], consequence: str, command: str,
                config: str = "NODE.json") -> int:  # fmt: skip
    """The anti-rollback floor, or ``error`` naming why it cannot be read and what recovers it; never 0 for a
    missing or damaged floor (fail closed, docs/boot.md §4)."""
    from appliance.node.floor import FloorUnreadableError, open_floor

    try:
        return open_floor(node).read()
    except FloorUnreadableError as exc:
        raise error(f"the anti-rollback floor cannot be read ({exc}), {consequence}",
                    remedy=_floor_remedy(node, exc, command, config)) from exc  # fmt: skip


def _floor_remedy(node: NodeConfig, exc: Exception, command: str, config: str) -> str:
    """What recovers an unreadable floor: boot's rebuild, removing what blocks it, or the right user."""
    from appliance.node.floor import FloorCorruptError, FloorMissingError, FloorNotAFileError

    where = f"the floor provider {node.floor_provider}" if node.floor_provider else str(node.floor_file)
    rebuild = (f"boot rebuilds it from the slot states and rewrites it (`appliance boot --config {config}`, "
               "docs/boot.md §4)")  # fmt: skip
    if isinstance(exc, FloorNotAFileError):
        return f"remove {where} (boot never deletes what is not a floor file); then {rebuild}; then {command} again"
    if isinstance(exc, FloorMissingError | FloorCorruptError):
        state = "missing" if isinstance(exc, FloorMissingError) else "damaged"
        return (
            f"the anti-rollback floor ({where}) is {state}: it is never re-created by hand (never as 0); "
            f"{rebuild.replace('docs/', f'event floor.{state}, docs/')}; then {command} again"
        )
    if not node.floor_provider and os.geteuid() != 0 and not os.access(node.floor_file, os.R_OK):
        return f"run {command} as root: the anti-rollback floor ({where}) is boot's, readable by root only"
    return f"check the disk that holds the anti-rollback floor ({where}): it could not be read"


def _queue(remote: RemoteConfig, store: Any) -> tuple[ReplicationState, int | None]:
    """The replicator's durable queue and the newest local generation, read the same way for status and prune
    (``ReplicationState.pending`` then decides, one rule for both)."""
    from appliance.remote.state import StateDir

    state = StateDir(remote.state_dir).load(remote.device)
    try:
        newest: int | None = store.select().opened.generation
    except ApplianceError:
        newest = None
    return state, newest


def queue_fields(state: ReplicationState, newest: int | None) -> dict[str, Any]:
    """What ``remote status`` shows as pending: ``ReplicationState.pending``, the rule ``remote prune`` refuses on."""
    pending = state.pending(newest)
    return {"pending_upload": pending, "pending": pending is not None}


def _prune_text(d: dict[str, Any]) -> str:
    deleted = len(d["bundles_deleted"]) + d["blobs_deleted"]
    if deleted == 0:
        done = "nothing to delete" if d["dry_run"] else "deleted nothing"
    else:
        verb = "would delete" if d["dry_run"] else "deleted"
        done = (f"{verb} {len(d['bundles_deleted'])} bundle(s) and {d['blobs_deleted']} blob(s) "
                f"({human_bytes(d['bytes_freed'])})")  # fmt: skip
    lines = [
        f"{d['prefix']}: {done}; kept {len(d['bundles_kept'])} bundle(s) (head: generation {d['head_generation']}, "
        f"floor {d['floor']}) and {d['blobs_kept']} blob(s); {d['not_ours']} other key(s) left alone"
    ]
    if d["unverified"]:
        lines.append(f"  left alone {len(d['unverified'])} object(s) named like a bundle that do not verify "
                     "(never kept, never deleted; remove them by hand once you know what they are):")  # fmt: skip
        lines += [f"    {key}: {problem}" for key, problem in sorted(d["unverified"].items())]
    return "\n".join(lines)


def _status(args: argparse.Namespace, out: Output) -> int:
    from appliance.remote.metrics import read_metrics
    from appliance.remote.prune import TRANSPORT_ERRORS
    from appliance.remote.pull import fetch_head
    from appliance.remote.s3 import ObjectStore

    _, remote, store = _open(args)
    state, newest = _queue(remote, store)
    data: dict[str, Any] = {"device": remote.device, "endpoint": remote.endpoint, "bucket": remote.bucket,
                            "prefix": remote.device_prefix, "newest_local": newest, **state.to_dict()}  # fmt: skip
    data.update(queue_fields(state, newest))
    data["metrics"] = read_metrics(Path(remote.state_dir), state, newest)
    failed: ApplianceError | None = None
    try:
        objects = ObjectStore(remote, remote.device_prefix)
        head = fetch_head(objects, _head_keys(remote), kind="device", name=remote.device,
                          model=store.config.model, last_seen=0, floor=0)  # fmt: skip
        data["remote_head"] = {"generation": head.generation, "issued": head.issued, "bundle": head.bundle.key}
    except TRANSPORT_ERRORS as exc:  # the bucket was not reached: the local state is shown, the exit code is pull's
        data["remote_head"], failed = exc.to_dict(), exc
    except ApplianceError as exc:  # reached, and its head is absent or does not verify: reported
        data["remote_head"] = {"error": type(exc).__name__, "problem": exc.problem}
    out.result(data, _status_text)
    if failed is None:
        return 0
    out.error(failed, json_too=False)
    return failed.exit_code


def _status_text(d: dict[str, Any]) -> str:
    rep = d["replicated"]
    lines = [
        f"remote {d['endpoint']} bucket {d['bucket']} prefix {d['prefix']}",
        f"  replicated: generation {rep['generation']} at {rep['at']}" if rep else "  replicated: nothing yet",
        f"  newest local: {d['newest_local']}  pending: {'yes' if d['pending'] else 'no'}",
        f"  uploads {d['uploads']}, blobs uploaded {d['blobs_uploaded']}, skipped {d['blobs_skipped']}, "
        f"{human_bytes(d['bytes_uploaded'])}, failures {d['failures']}",
    ]
    if d["last_error"]:
        lines.append(f"  failing: {d['last_error']} (attempt {d['attempts']})")
    head = d["remote_head"]
    lines.append(f"  bucket head: {head.get('generation', head.get('problem'))}")
    return "\n".join(lines)


def _pull(args: argparse.Namespace, out: Output) -> int:
    from appliance.errors import FloorUnavailableError
    from appliance.remote.pull import fetch_head, pull_checkpoint
    from appliance.remote.s3 import ObjectStore
    from appliance.remote.state import StateDir

    node, remote, store = _open(args)
    floor = _read_floor(node, FloorUnavailableError, "so a bucket checkpoint cannot be checked against it; nothing "
                        "was pulled", "pull", args.config)  # fmt: skip
    objects = ObjectStore(remote, remote.device_prefix)
    state_dir = StateDir(remote.state_dir)
    head = fetch_head(objects, _head_keys(remote), kind="device", name=remote.device, model=store.config.model,
                      last_seen=state_dir.seen(objects.prefix), floor=floor)  # fmt: skip
    with out.progress(None, "pull") as progress:
        result = pull_checkpoint(store, objects, head, floor=floor, progress=progress)
    out.result({"requests": objects.requests, **result.to_dict()}, _pull_text)
    return 0


def _pull_text(d: dict[str, Any]) -> str:
    if d["already"]:
        return f"generation {d['generation']} is already committed in slot {d['slot']}"
    return (
        f"pulled generation {d['generation']} into slot {d['slot']}: {d['from_source']} blobs "
        f"({human_bytes(d['bytes_from_source'])}) from the object store, {d['from_other_slot']} from the other slot"
    )


def cmd_publish(args: argparse.Namespace, out: Output) -> int:
    from appliance.remote.channel import publish
    from appliance.remote.s3 import ObjectStore
    from appliance.store.store import Store

    remote = load_remote(args.remote)
    store = Store.open(args.root)
    opened = store.select(args.generation).opened
    objects = ObjectStore(remote, remote.channel_prefix(args.channel))
    result = publish(store, objects, opened, channel=args.channel, keys=[SigningKey.load(args.key)])
    out.result(
        result,
        lambda d: (
            f"channel {d['channel']}: generation {d['generation']} as sequence {d['sequence']}"
            + (" (already published)" if d["already"] else f", {d['uploaded']} of {d['blobs']} blobs uploaded")
        ),
    )
    return 0


def cmd_channel(args: argparse.Namespace, out: Output) -> int:
    from appliance.format.inbox import VerifiedStaging
    from appliance.remote.channel import follow
    from appliance.remote.inbox import open_inbox
    from appliance.remote.s3 import ObjectStore
    from appliance.remote.staging import stage_release
    from appliance.remote.state import StateDir

    if args.if_configured and (not args.remote.exists() or not load_remote(args.remote).channel):
        out.result(
            {"channel": None, "imported": False}, lambda _: "no channel configured in remote.json: nothing to do"
        )
        return 0
    node, remote, store = _open(args)
    if not remote.channel:
        raise ConfigError("remote.json names no channel", remedy="set channel (the fleet channel's name)")
    objects = ObjectStore(remote, remote.channel_prefix())
    pinned = [PublicKey.load(p) for p in remote.channel_trust]  # legacy pin; the trust store decides
    events = EventLog(node.event_log, "channel")
    state_dir = StateDir(args.state_dir or remote.state_dir)
    inbox = open_inbox(node.channel_inbox, create=True) if node.channel_inbox else None
    memo = VerifiedStaging() if args.watch else None  # one pass (no --watch) verifies a handed-off staging fully
    stop = threading.Event()
    if args.watch:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while True:
        try:
            if inbox is not None:  # production: stage only; the persistence watchdog imports (design §11.6)
                result = stage_release(store, objects, channel=remote.channel, pinned=pinned, state_dir=state_dir,
                                       inbox=inbox, floor=_floor(node), memo=memo)  # fmt: skip
            else:  # a single-user development node: this process is the store's writer
                result = follow(store, objects, channel=remote.channel, pinned=pinned, state_dir=state_dir,
                                floor=_floor(node))  # fmt: skip
            _emit_pass(events, objects.prefix, result)
        except ApplianceError as exc:
            if not args.watch:
                raise
            events.emit("remote.restore_failed", site=objects.prefix, error=type(exc).__name__, problem=exc.problem)
            result = {"error": type(exc).__name__, "problem": exc.problem}
        if not args.watch:
            out.result(result, _channel_text)
            return 0
        if stop.wait(remote.poll_interval):
            return 0


def _emit_pass(events: EventLog, site: str, result: dict[str, Any]) -> None:
    if result["imported"]:
        events.emit("remote.restored", site=site, **{k: v for k, v in result.items() if k != "channel"})
    elif result.get("restaged"):
        events.emit("channel.restaged", site=site, **{**result, "repaired": ", ".join(result["repaired"])})
    elif result.get("staged"):
        events.emit("channel.staged", site=site, **result)


def _channel_text(d: dict[str, Any]) -> str:
    done = " (nothing new)"
    if d["imported"]:
        done = f" imported into slot {d['slot']}"
    elif d.get("restaged"):
        done = (f" staged again for the persistence watchdog: the staging in the inbox was incomplete or damaged "
                f"({', '.join(d['repaired'])} written again)")  # fmt: skip
    elif d.get("staged"):
        done = f" staged for the persistence watchdog ({d['downloaded']} of {d['blobs']} blobs downloaded)"
    elif d.get("waiting"):
        done = " (nothing new: staged whole, waiting for the persistence watchdog to import it)"
    elif d.get("superseded"):
        done = f" (nothing new: the node will not import it, the inbox was emptied: {d['superseded']})"
    return f"channel {d['channel']}: sequence {d['sequence']}, generation {d['generation']}{done}"


def _floor(node: NodeConfig) -> int:
    """The anti-rollback floor; 0 when this user may not read it (the supervisord program runs as
    appliance-channel, and the floor is boot's alone): boot refuses a checkpoint below the floor anyway."""
    from appliance.node.floor import FloorUnreadableError, open_floor

    try:
        return open_floor(node).read()
    except FloorUnreadableError:
        return 0
