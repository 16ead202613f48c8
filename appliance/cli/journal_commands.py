"""``appliance journal key|check``: the adaptation journal's MAC key and an offline check of its segments.

``journal key`` creates the journal MAC key (run it as the service's user, ``appliance-serve``:
the key must be owned by the process that uses it). ``journal check`` reads every segment with
that key and walks them with the rules boot's replay uses (``appliance.format.journal_walk``),
from the journal point or content of the store's newest checkpoint (else from the journal's root
lineage): records, torn or corrupt tails, where replay would stop and why (forged, foreign, gap —
a removed step record, segment or outcome record) and what a boot would set aside. Exit 51
(``JournalForgedError``) where replay stops, or when any record fails its MAC; a torn or corrupt
tail alone is a cut, not a stop (exit 0, as boot goes on). Neither changes a segment.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from appliance.cli.boot_commands import add_config
from appliance.cli.main import add_json
from appliance.cli.output import Output
from appliance.errors import ConfigError, JournalForgedError
from appliance.node.config import NodeConfig, load_config

if TYPE_CHECKING:
    from appliance.format.journal import Bad
    from appliance.format.journal_walk import Segment


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("journal", help="the adaptation journal: create its MAC key, check its segments")
    verbs = p.add_subparsers(dest="journal_command", required=True, metavar="VERB")
    k = verbs.add_parser("key", help="create the journal MAC key (as the model service's user) if absent")
    add_config(k)
    add_json(k)
    k.set_defaults(func=cmd_key)
    c = verbs.add_parser(
        "check", help="walk the journal as boot's replay does: records, cut tails, where replay stops and why"
    )
    add_config(c)
    add_json(c)
    c.set_defaults(func=cmd_check)


def cmd_key(args: argparse.Namespace, out: Output) -> int:
    from appliance.journal.keyfile import create_journal_key, load_journal_key

    config = load_config(args.config)
    path = config.journal_key_file()
    created = create_journal_key(path)
    load_journal_key(path)  # refuses a key others could read, or one another user owns
    out.result(
        {"key": path, "created": created}, lambda d: f"journal key {d['key']} ({'created' if d['created'] else 'kept'})"
    )
    return 0


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    from appliance.format.journal_walk import summary, walk
    from appliance.journal.files import LocalJournalFiles
    from appliance.journal.keyfile import load_journal_key
    from appliance.journal.reader import read_segments

    config = load_config(args.config)
    if not config.journal_dir:
        raise ConfigError("node.json sets no journal_dir: this node keeps no adaptation journal")
    segments = read_segments(LocalJournalFiles(config.journal_dir), load_journal_key(config.journal_key_file()))
    start = _start(config, segments)
    w = walk(segments, start["point"], start["content_sha256"])
    rows = [_row(s, s.name in w.used) for s in segments]
    point = start["point"]
    data = {"journal": config.journal_dir, "segments": rows, "records": sum(r["records"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows), "start": start | {"point": point.to_dict() if point else None},
            "replay": summary(w, segments, point)}  # fmt: skip
    damage = _damage(data)
    data["error"] = damage.to_dict() if damage else None
    out.result(data, _text)
    if damage is None:
        return 0
    out.error(damage, json_too=False)  # the JSON result carries it already
    return damage.exit_code


def _row(s: Segment, on_chain: bool) -> dict[str, Any]:
    return {"segment": s.name, "records": len(s.records), "bytes": s.size,
            "first": s.records[0].index if s.records else None, "last": s.records[-1].index if s.records else None,
            "outcomes": len(s.outcomes), "ahead": bool(s.header and s.header.ahead), "on_chain": on_chain,
            "stop": _stop(s.stop)}  # fmt: skip


def _start(config: NodeConfig, segments: list[Segment]) -> dict[str, Any]:
    """Where boot's replay starts: the store's newest checkpoint's journal point or content, else the root."""
    from appliance.errors import ApplianceError, StorageError
    from appliance.format.journal import Point
    from appliance.node.identity import open_node_store

    try:
        opened = open_node_store(config).select().opened
        meta = dict(opened.verified.manifest.metadata)
        point, digest = Point.from_metadata(meta), meta.get("content_sha256")
    except (ApplianceError, StorageError) as exc:
        return _root(segments, None, f"no checkpoint verifies ({type(exc).__name__}: {getattr(exc, 'problem', exc)})")
    checkpoint = {"slot": opened.slot, "generation": opened.generation}
    if point is None and not isinstance(digest, str):
        return _root(segments, checkpoint, "the newest checkpoint names neither a journal point nor its content")
    return {"from": "checkpoint", "why": "", "checkpoint": checkpoint, "point": point,
            "content_sha256": digest if isinstance(digest, str) else None}  # fmt: skip


def _root(segments: list[Segment], checkpoint: dict[str, Any] | None, why: str) -> dict[str, Any]:
    from appliance.format.journal_walk import root_digest

    return {"from": "root", "why": why, "checkpoint": checkpoint, "point": None,
            "content_sha256": root_digest(segments)}  # fmt: skip


def _damage(d: dict[str, Any]) -> JournalForgedError | None:
    """51 where boot's replay stops (forged, foreign, gap), or where any segment holds a forged record."""
    stop = d["replay"]["stopped"]
    forged = [r["segment"] for r in d["segments"] if r["stop"] and r["stop"]["kind"] == "forged"]
    if stop is not None and stop["kind"] != "forged":
        return JournalForgedError(
            f"replay stops at record {stop['index']} of {stop['segment']} ({stop['kind']}): {stop['detail']}",
            remedy="records were removed from, reordered in or copied into the journal directory (the service "
            "never writes a gap or a foreign record): boot replays the steps before this one and sets the rest "
            "aside under JOURNAL/retired/ (`appliance boot` says so); check who can write the journal",
        )
    if forged:
        return JournalForgedError(f"{len(forged)} segment(s) hold a record that fails its MAC: {forged[0]}")
    return None


def _stop(bad: Bad | None) -> dict[str, Any] | None:
    return {"kind": bad.kind, "offset": bad.offset, "detail": bad.detail} if bad is not None else None


def _span(first: int | None, last: int | None) -> str:
    return f" {first}..{last}" if first is not None else ""


def _text(d: dict[str, Any]) -> str:
    lines = [f"{d['journal']}: {len(d['segments'])} segments, {d['records']} records, {d['bytes']} bytes"]
    for r in d["segments"]:
        stop = f"  STOP {r['stop']['kind']} at byte {r['stop']['offset']}: {r['stop']['detail']}" if r["stop"] else ""
        chain = "" if r["on_chain"] else " (not replayed)"
        lines.append(f"  {r['segment']}: {r['records']} records{_span(r['first'], r['last'])}{chain}{stop}")
    return "\n".join(lines + _replay_text(d["start"], d["replay"]))


def _replay_text(start: dict[str, Any], rp: dict[str, Any]) -> list[str]:
    c, p = start["checkpoint"], start["point"]
    if start["from"] == "root":
        origin = f"the journal's root lineage ({start['why']})"
    else:
        origin = f"checkpoint {c['slot']}/{c['generation']}"
        origin += f" (journal point {p['lineage'][:8]}:{p['index']})" if p else " (the lineage continuing its content)"
    lines = [f"replay from {origin}: {rp['records']} records{_span(rp['first'], rp['last'])}"]
    if rp["stopped"]:
        s = rp["stopped"]
        lines.append(f"  STOP {s['kind']} at record {s['index']} of {s['segment']}: {s['detail']}")
    if rp["set_aside_records"] or rp["set_aside_segments"]:
        whole = f" ({len(rp['set_aside_segments'])} whole segments)" if rp["set_aside_segments"] else ""
        lines.append(f"  boot sets aside {rp['set_aside_records']} step records under JOURNAL/retired/{whole}")
    return lines
