"""``appliance scrub ROOT``: one resumable, time-sliced scrub pass slice with self-heal.

Owns: the command's arguments, rendering and exit code. Does not own scrubbing
(``appliance.store.scrub``). Exit codes: 0 every frame checked so far is good; 1 (warnings)
frames were repaired from the other slot; ``FrameError`` (35) frames are damaged in both slots
(marked, never patched: boot falls back or enters recovery mode).
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.main import add_json, add_root
from appliance.cli.output import Output, human_bytes
from appliance.errors import FrameError
from appliance.store.scrub import scrub_store
from appliance.store.store import Store

WARNINGS = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scrub", help="re-verify stored frames in a resumable time slice; repair from the other slot")
    add_root(p)
    p.add_argument(
        "--max-duration",
        type=float,
        metavar="SECONDS",
        help="stop after about this long; the next run resumes where this one stopped (default: no limit)",
    )
    p.add_argument("--max-bytes", type=int, metavar="BYTES", help="stop after checking about this many stored bytes")
    p.add_argument("--restart", action="store_true", help="abandon the pass in progress and start a new one")
    add_json(p)
    p.set_defaults(func=cmd_scrub)


def cmd_scrub(args: argparse.Namespace, out: Output) -> int:
    store = Store.open(args.root)
    report = scrub_store(store, max_seconds=args.max_duration, max_bytes=args.max_bytes, restart=args.restart)
    data = report.to_dict()
    out.result(data, _text)
    if report.marked:
        raise FrameError(
            f"{len(report.marked)} frame(s) are damaged in both slots and were marked, not repaired",
            remedy="boot falls back past the checkpoints that name them; commit or import a good checkpoint",
        )
    return WARNINGS if report.repaired else 0


def _text(d: dict[str, Any]) -> str:
    lines = [
        f"  unusable checkpoint {u['slot']}/gen {u['generation']}: {u['problem']}" for u in d["unusable_checkpoints"]
    ]
    lines += [f"  repaired {r['slot']}/{r['digest'][:12]} from the other slot ({r['problem']})" for r in d["repaired"]]
    lines += [f"  MARKED {m['slot']}/{m['digest'][:12]} (gens {m['generations']}): {m['problem']}" for m in d["marked"]]
    state = "pass completed" if d["pass_completed"] else f"{d['frames_left']} frame(s) left in this pass"
    lines.append(
        f"scrub pass {d['pass_number']}: checked {d['frames_checked']} frame(s), {human_bytes(d['bytes_checked'])} "
        f"in {d['seconds']:.2f} s; {state}; {d['passes_completed']} pass(es) completed in total"
    )
    return "\n".join(lines)
