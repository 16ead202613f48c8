"""``appliance vendor ROOT``: the vendors whose OpenSSF model-signing signatures imports accept.

Owns: the command's arguments and rendering. Does not own the vendor trust file or its rules
(``appliance.provenance.vendors``). Actions: ``list`` (default), ``add NAME --key PUB.pem |
--cert-chain CHAIN.pem``, ``remove NAME``, ``require on|off`` (refuse every ``commit`` whose
source carries no valid vendor signature).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance.cli.main import add_json, add_root
from appliance.cli.output import Output
from appliance.errors import UsageError, VendorTrustError
from appliance.provenance.vendors import (
    MAX_PEM_BYTES,
    Vendor,
    VendorTrust,
    load_vendors,
    save_vendors,
    vendors_path,
)
from appliance.store.lock import writer_lock
from appliance.store.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("vendor", help="list, add or remove model-signing vendors; require vendor signatures")
    add_root(p)
    p.add_argument("action", nargs="?", default="list", choices=["list", "add", "remove", "require"])
    p.add_argument("value", nargs="?", help="vendor NAME (add, remove) or on|off (require)")
    material = p.add_mutually_exclusive_group()
    material.add_argument("--key", type=Path, metavar="PUB.pem", help="the vendor's EC P-256/P-384 public key")
    material.add_argument("--cert-chain", type=Path, metavar="CHAIN.pem", help="PEM chain anchoring its certificates")
    add_json(p)
    p.set_defaults(func=cmd_vendor)


def cmd_vendor(args: argparse.Namespace, out: Output) -> int:
    store = Store.open(args.root)
    path = vendors_path(Path(args.root), store.config.vendors)
    trust = load_vendors(path)
    changed = _apply(args, trust)
    if changed is not trust:
        with writer_lock(store.lock_path):
            save_vendors(path, changed)
    data = {
        "file": str(path),
        "require_signature": changed.require_signature,
        "vendors": [{"name": v.name, "method": v.method, "material": v.describe()} for v in changed.vendors],
    }
    out.result(data, _text)
    return 0


def _apply(args: argparse.Namespace, trust: VendorTrust) -> VendorTrust:
    if args.action == "list":
        return trust
    if not args.value:
        raise UsageError(f"`vendor {args.action}` needs a value (NAME, or on|off for require)")
    if args.action == "require":
        if args.value not in ("on", "off"):
            raise UsageError("`vendor require` takes on or off")
        return VendorTrust(trust.vendors, args.value == "on")
    if args.action == "remove":
        return trust.without(args.value)
    source = args.key or args.cert_chain
    if source is None:
        raise UsageError("`vendor add NAME` needs --key PUB.pem or --cert-chain CHAIN.pem")
    try:
        with open(source, "rb") as f:
            pem = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise VendorTrustError(f"cannot read {source}: {exc.strerror}") from exc
    vendor = Vendor(args.value, public_key=pem) if args.key else Vendor(args.value, certificate_chain=pem)
    return trust.with_vendor(vendor)


def _text(d: dict[str, Any]) -> str:
    lines = [f"vendor signature required on import: {'yes' if d['require_signature'] else 'no'}  ({d['file']})"]
    lines += [f"  {v['name']}: {v['material']}" for v in d["vendors"]] or ["  no vendors"]
    return "\n".join(lines)
