"""``appliance key ...`` and ``appliance erase --crypto``: encryption at rest from the command line.

Owns: the commands and their output. Does not own the operations (``appliance.store.encryption``)
or the rules (docs/design.md §14).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance.cli.main import add_json, add_root
from appliance.cli.output import Output
from appliance.crypto import FileKek, KekSource, SystemdCredsKek, parse_kek_option
from appliance.errors import UsageError
from appliance.signing import SigningKey
from appliance.store import encryption
from appliance.store.store import Store

KEK_HELP = (
    "key-encryption key: file:PATH (32 bytes, mode 0400; created if missing with --create-kek), "
    "systemd-creds:PATH (a systemd credential; created with --create-kek), entry-point:pkg.mod:factory (OP-TEE)"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("key", help="encryption at rest: status, enable, rotate-kek, rotate-data")
    add_root(p)
    p.add_argument("action", choices=["status", "enable", "rotate-kek", "rotate-data"])
    p.add_argument("--kek", metavar="SPEC", help=f"enable: the {KEK_HELP}; rotate-kek: the NEW one")
    p.add_argument("--create-kek", action="store_true", help="create the KEK named by --kek first")
    p.add_argument("--key", type=Path, metavar="KEYFILE", help="rotate-data: signing key for the compaction commit")
    add_json(p)
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("erase", help="crypto-erase: destroy every wrapped data key (checkpoints become unreadable)")
    add_root(p)
    p.add_argument("--crypto", action="store_true", required=True, help="destroy the keys (the only erase mode)")
    p.add_argument("--destroy-kek", action="store_true", help="also overwrite and delete a file KEK")
    p.add_argument("--yes", action="store_true", required=True, help="confirm: this cannot be undone")
    add_json(p)
    p.set_defaults(func=cmd_erase)


def kek_from_args(spec: str | None, create: bool) -> KekSource:
    if not spec:
        raise UsageError("this action needs --kek SPEC", remedy=f"pass --kek ({KEK_HELP})")
    source = parse_kek_option(spec)
    if create:
        if isinstance(source, FileKek):
            return FileKek.create(source.path)
        if isinstance(source, SystemdCredsKek):
            return SystemdCredsKek.create(source.path)
        raise UsageError("--create-kek creates file and systemd-creds KEKs only")
    return source


def _text(d: dict[str, Any]) -> str:
    lines = [f"new commits sealed: {'yes' if d['encrypt_new_commits'] else 'no'}", f"keyring: {d['keyring']}"]
    if d["keyring"] == "present":
        lines.append(f"KEK: {d['kek_provider']} ({d['kek']})")
        lines.append(f"active data key: {d['active_key'][:12]}; keys: {', '.join(k[:12] for k in d['keys'])}")
        for key_id, where in d["used_by"].items():
            lines.append(f"  {key_id[:12] if key_id != 'plain' else 'plain'}: {', '.join(where)}")
    if "problem" in d:
        lines.append(f"problem: {d['problem']}")
    return "\n".join(lines)


def cmd_key(args: argparse.Namespace, out: Output) -> int:
    if args.action == "status":
        out.result(encryption.status(Store.open(args.root)), _text)
        return 0
    if args.action == "enable":
        store = Store.open(args.root)
        out.result(encryption.enable(store, kek_from_args(args.kek, args.create_kek)), _text)
        return 0
    if args.action == "rotate-kek":
        store = Store.open(args.root)
        out.result(encryption.rotate_kek(store, kek_from_args(args.kek, args.create_kek)), _text)
        return 0
    if args.key is None:
        raise UsageError("rotate-data commits a compaction: it needs --key KEYFILE")
    store = Store.open(args.root)
    data = encryption.rotate_data_key(store, [SigningKey.load(args.key)])
    out.result(
        data, lambda d: f"re-sealed generation {d['commit']['generation']} under {d['active_key'][:12]}\n" + _text(d)
    )
    return 0


def cmd_erase(args: argparse.Namespace, out: Output) -> int:
    store = Store.open(args.root)
    done = encryption.erase(store, destroy_kek=args.destroy_kek)
    out.result(
        done,
        lambda d: (
            f"crypto-erased {args.root}: destroyed {', '.join(d['destroyed']) or 'nothing (no keyring)'} "
            f"in {d['seconds'] * 1000:.1f} ms" + ("; KEK file destroyed" if d.get("kek_destroyed") else "")
        ),
    )
    return 0
