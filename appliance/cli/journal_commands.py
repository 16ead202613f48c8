"""``appliance journal key|check``: the adaptation journal's MAC key and an offline check of its segments.

``journal key`` creates the journal MAC key (run it as the service's user, ``appliance-serve``:
the key must be owned by the process that uses it). ``journal check`` reads every segment with
that key and reports records, torn or corrupt tails and forged records; exit 51
(``JournalForgedError``) when any record fails its MAC. Neither changes a segment.
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.boot_commands import add_config
from appliance.cli.main import add_json
from appliance.cli.output import Output
from appliance.errors import ConfigError, JournalForgedError
from appliance.node.config import load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("journal", help="the adaptation journal: create its MAC key, check its segments")
    verbs = p.add_subparsers(dest="journal_command", required=True, metavar="VERB")
    k = verbs.add_parser("key", help="create the journal MAC key (as the model service's user) if absent")
    add_config(k)
    add_json(k)
    k.set_defaults(func=cmd_key)
    c = verbs.add_parser("check", help="read every journal segment: records, cut tails, forged records")
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
    from appliance.journal.files import LocalJournalFiles
    from appliance.journal.keyfile import load_journal_key
    from appliance.journal.reader import read_segments

    config = load_config(args.config)
    if not config.journal_dir:
        raise ConfigError("node.json sets no journal_dir: this node keeps no adaptation journal")
    segments = read_segments(LocalJournalFiles(config.journal_dir), load_journal_key(config.journal_key_file()))
    rows: list[dict[str, Any]] = []
    for s in segments:
        rows.append({"segment": s.name, "records": len(s.records), "bytes": s.size,
                     "first": s.records[0].index if s.records else None,
                     "last": s.records[-1].index if s.records else None,
                     "stop": _stop(s.stop)})  # fmt: skip
    data = {"journal": config.journal_dir, "segments": rows, "records": sum(r["records"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows)}  # fmt: skip
    out.result(data, _text)
    forged = [r for r in rows if r["stop"] and r["stop"]["kind"] == "forged"]
    if forged:
        raise JournalForgedError(f"{len(forged)} segment(s) hold a record that fails its MAC: {forged[0]['segment']}")
    return 0


def _stop(bad: Any) -> dict[str, Any] | None:
    return {"kind": bad.kind, "offset": bad.offset, "detail": bad.detail} if bad is not None else None


def _text(d: dict[str, Any]) -> str:
    lines = [f"{d['journal']}: {len(d['segments'])} segments, {d['records']} records, {d['bytes']} bytes"]
    for r in d["segments"]:
        stop = f"  STOP {r['stop']['kind']} at byte {r['stop']['offset']}: {r['stop']['detail']}" if r["stop"] else ""
        lines.append(f"  {r['segment']}: {r['records']} records {r['first']}..{r['last']}{stop}")
    return "\n".join(lines)
