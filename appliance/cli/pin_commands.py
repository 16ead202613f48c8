"""``appliance pin`` / ``appliance unpin``: checkpoints retention must never collect (a factory state).

Owns: the two commands and their output. Does not own the pins file (``appliance.format.pins``,
``Store.pin``) or retention (``appliance.store.gc``, rule G3 in docs/design.md §6.4).
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.main import add_json, add_root
from appliance.cli.output import Output
from appliance.format.pins import Pins
from appliance.store.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pin", help="keep a committed generation forever (retention never collects it); no GEN: list")
    add_root(p)
    p.add_argument("generation", type=int, nargs="?", metavar="GEN")
    p.add_argument("--label", default="pinned", help="why it is kept, e.g. factory")
    add_json(p)
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("unpin", help="let retention collect a pinned generation again")
    add_root(p)
    p.add_argument("generation", type=int, metavar="GEN")
    add_json(p)
    p.set_defaults(func=cmd_unpin)


def cmd_pin(args: argparse.Namespace, out: Output) -> int:
    store = Store.open(args.root)
    pins = store.pins() if args.generation is None else store.pin(args.generation, args.label)
    out.result(_data(pins), _text)
    return 0


def cmd_unpin(args: argparse.Namespace, out: Output) -> int:
    out.result(_data(Store.open(args.root).unpin(args.generation)), _text)
    return 0


def _data(pins: Pins) -> dict[str, Any]:
    return {"pins": [{"generation": g, "label": pins.labels[g]} for g in sorted(pins.labels)]}


def _text(d: dict[str, Any]) -> str:
    if not d["pins"]:
        return "no pinned generations"
    return "\n".join(f"pinned: generation {p['generation']} ({p['label']})" for p in d["pins"])
