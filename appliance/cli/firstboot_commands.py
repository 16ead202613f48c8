"""``appliance firstboot``: provision a flashed node (run by the first-boot units; docs/image.md §4).

    appliance firstboot format    --config /etc/appliance/node.json   # before the slot mounts
    appliance firstboot provision --config /etc/appliance/node.json   # with the slots mounted

``--root DIR`` re-bases the image paths (partlabels, factory checkpoint, release trust store,
provisioning file, /etc/appliance, done marker) below DIR, for tests and for provisioning a
mounted image; node.json's own paths are used as written. Exit 0 when the phase is complete
(or was already), 80/81 (``ProvisioningError``/``KeyProviderError``) when a step failed: the
next run resumes at that step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from appliance.cli.boot_commands import add_config
from appliance.cli.main import add_json
from appliance.cli.output import Output
from appliance.node.config import load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("firstboot", help="first boot of a flashed node: format empty CKPT partitions, provision")
    p.add_argument("phase", choices=("format", "provision", "all"), help="format: before the slot mounts")
    add_config(p)
    p.add_argument("--root", type=Path, metavar="DIR", help="look for the image's files below DIR (tests)")
    add_json(p)
    p.set_defaults(func=cmd_firstboot)


def cmd_firstboot(args: argparse.Namespace, out: Output) -> int:
    from appliance.provision import FirstBoot, FirstBootPaths

    paths = FirstBootPaths().under(args.root) if args.root else FirstBootPaths()
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    boot = FirstBoot(load_config(args.config), paths, say=say)
    data: dict[str, Any] = {"phase": args.phase, "already_done": boot.done}
    if boot.done:
        data["summary"] = boot.provision()
    else:
        if args.phase in ("format", "all"):
            data["partitions"] = [o.to_dict() for o in boot.format()]
        if args.phase in ("provision", "all"):
            data["summary"] = boot.provision()
    out.result(data, _text)
    return 0


def _text(d: dict[str, Any]) -> str:
    if d["already_done"]:
        return "first boot: this node is already provisioned"
    summary = d.get("summary")
    if summary is None:
        return "first boot: partitions ready"
    return f"first boot: device {summary.get('device_id')} provisioned (key {str(summary.get('keyid'))[:16]})"
