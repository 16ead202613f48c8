"""``appliance`` command line: the argument grammar and the one error -> exit-code mapping."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance import __version__
from appliance.cli.output import Output
from appliance.errors import ApplianceError

Command = Callable[[argparse.Namespace, Output], int]

# Further command groups (boot/service/persist, scrub, report, ...) live in their own modules,
# each with ``register(subparsers)``; listing them here is the only edit main.py needs.
COMMAND_MODULES: list[str] = [
    "appliance.cli.boot_commands",
    "appliance.cli.node_commands",
    "appliance.cli.scrub_commands",
    "appliance.cli.perf_commands",
    "appliance.cli.pin_commands",
    "appliance.cli.transfer_commands",
    "appliance.cli.remote_commands",
    "appliance.cli.firstboot_commands",
    "appliance.cli.vendor_commands",
    "appliance.cli.journal_commands",
    "appliance.cli.key_commands",
    "appliance.console.commands",  # the recovery console's verbs (`appliance tech`, `appliance console`)
]
# Programs supervisord and systemd start at power-on (issue 16): their command line is parsed with
# their own module only, so none of them imports every other command's dependencies first.
POWER_ON_COMMANDS = dict.fromkeys(("boot", "serve", "persist", "guard"), "appliance.cli.boot_commands")


def add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, metavar="ROOT", help="store root directory")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _root_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="appliance", description="Signed, verified, crash-consistent A/B model checkpoints."
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole grammar; for a ``POWER_ON_COMMANDS`` ``command``, only its module's commands."""
    if command in POWER_ON_COMMANDS:
        parser, sub = _root_parser()
        importlib.import_module(POWER_ON_COMMANDS[command]).register(sub)
        return parser
    from appliance.cli import store_commands as sc
    from appliance.signing.keys import KEY_TYPES
    from appliance.store.config import DEFAULT_FRAME_SIZE, DEFAULT_KEEP

    parser, sub = _root_parser()

    p = sub.add_parser("keygen", help="create a signing key pair (KEYFILE, KEYFILE.pub); Ed25519 unless --type")
    p.add_argument("keyfile", type=Path, metavar="KEYFILE")
    p.add_argument(
        "--type",
        choices=KEY_TYPES,
        default=KEY_TYPES[0],
        help="ecdsa-p256: also signs OpenSSF model-signing model.sig files (restore --sign-model)",
    )
    add_json(p)
    p.set_defaults(func=sc.cmd_keygen)

    p = sub.add_parser("init", help="create a store with two empty slots")
    add_root(p)
    p.add_argument(
        "--trust",
        nargs="+",
        required=True,
        type=Path,
        metavar="PUBKEY",
        help="trusted public key(s)",
    )
    p.add_argument("--model", default="default", help="model id / compatibility string (default: %(default)s)")
    p.add_argument("--frame-size", type=int, default=DEFAULT_FRAME_SIZE, help="frame size in bytes")
    p.add_argument("--policy", choices=["compact", "fast", "auto"], default="compact")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="checkpoints kept per slot")
    p.add_argument("--encrypt", action="store_true", help="seal every frame (AES-256-GCM) under a per-store data key")
    p.add_argument(
        "--kek",
        metavar="SPEC",
        help="with --encrypt: file:PATH | systemd-creds:PATH | entry-point:pkg.mod:factory "
        "(default file:ROOT.kek, created 0400 if missing; a file or credential named here is created if missing)",
    )
    add_json(p)
    p.set_defaults(func=sc.cmd_init)

    p = sub.add_parser("trust", help="list, add or revoke trusted signing keys; set a key's role")
    add_root(p)
    p.add_argument("action", choices=["list", "add", "revoke", "role"])
    p.add_argument("value", nargs="?", help="PUBKEY file (add) or key id (revoke, role)")
    p.add_argument("--comment", help="label stored with an added key")
    p.add_argument(
        "--role",
        choices=["release", "device", "none"],
        help="release: signs the listed models; "
        "device: bound to one device, signs only descendants of a release; none: unrestricted (v1)",
    )
    p.add_argument("--model", action="append", default=[], metavar="ID", help="model id a release key signs")
    p.add_argument("--device", metavar="ID", help="device id a device key is bound to")
    add_json(p)
    p.set_defaults(func=sc.cmd_trust)

    _add_data_commands(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _add_data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appliance.cli import store_commands as sc

    p = sub.add_parser("commit", help="commit a .safetensors file or model directory as a signed checkpoint")
    add_root(p)
    p.add_argument("source", type=Path, metavar="SOURCE")
    p.add_argument("--key", required=True, type=Path, metavar="KEYFILE")
    p.add_argument("--meta", metavar="JSON", help="JSON object (or @file) stored with the checkpoint")
    p.add_argument("--policy", choices=["compact", "fast", "auto"], help="override the store's policy")
    p.add_argument("--full", action="store_true", help="compaction: store every frame without a delta chain")
    p.add_argument("--allow-empty", action="store_true", help="commit even if the source holds no tensors")
    p.add_argument(
        "--new-layout",
        action="store_true",
        help="allow tensors (names, dtypes, shapes) that differ from the newest checkpoint's: the store's model "
        "changes (another architecture, a subset, a resized tensor); refused otherwise (exit 74)",
    )
    add_json(p)
    p.set_defaults(func=sc.cmd_commit)

    p = sub.add_parser("verify", help="verify every committed checkpoint in both slots")
    add_root(p)
    p.add_argument("--deep", action="store_true", help="also decode every frame and check its raw SHA-256")
    add_json(p)
    p.set_defaults(func=sc.cmd_verify)

    p = sub.add_parser(
        "restore", help="restore the newest valid checkpoint to a .safetensors file or a model directory"
    )
    add_root(p)
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE.safetensors|DIR/",
        help="a file, or (trailing slash or existing directory) a complete model directory: shards, index, assets",
    )
    p.add_argument(
        "--tensors",
        action="append",
        metavar="GLOB",
        help="restore only tensors whose name matches (repeatable; shell-style glob, case-sensitive, `*` also "
        "matches dots; `appliance log ROOT --tensors` lists the names)",
    )
    p.add_argument(
        "--sign-model",
        type=Path,
        metavar="KEYFILE",
        help="directory: also write an OpenSSF model-signing model.sig with this ECDSA P-256 key",
    )
    p.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        help="directory: new shards of at most SIZE (e.g. 200KB, 5GB) instead of the recorded layout",
    )
    p.add_argument("--generation", type=int, metavar="N", help="restore exactly this generation")
    p.add_argument("--deep", action="store_true", help="also check raw SHA-256 of every decoded frame")
    add_json(p)
    p.set_defaults(func=sc.cmd_restore)

    p = sub.add_parser("log", help="list committed checkpoints, newest first")
    add_root(p)
    p.add_argument(
        "--tensors", action="store_true", help="also list each checkpoint's tensors (names for restore --tensors)"
    )
    add_json(p)
    p.set_defaults(func=sc.cmd_log)

    for name, func, text in (
        ("status", sc.cmd_status, "slot health, newest valid checkpoint, next commit target"),
        ("gc", sc.cmd_gc, "apply retention and remove unreferenced frames and leftovers"),
    ):
        p = sub.add_parser(name, help=text)
        add_root(p)
        add_json(p)
        p.set_defaults(func=func)

    p = sub.add_parser("demo", help="run the whole lifecycle on a built-in model in a work directory")
    p.add_argument("--workdir", type=Path, help="directory for the demo store (default: a new temp dir)")
    p.set_defaults(func=_demo, json=False)


def _demo(args: argparse.Namespace, out: Output) -> int:
    from appliance.cli.demo import run_demo

    return run_demo(args.workdir, out)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    out = Output(json_mode=getattr(args, "json", False))
    func: Command = args.func
    try:
        return func(args, out)
    except ApplianceError as exc:
        out.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        out.note("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
