"""``appliance export`` and ``appliance import``: checkpoints on a USB stick (portable layout).

Each command calls one function of ``appliance.transfer`` and renders its result; errors propagate
to ``main`` (typed, with a remedy and an exit code).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance.cli.output import Output, human_bytes
from appliance.errors import UsageError
from appliance.storage import LocalStorage
from appliance.store.bootstate import SlotStates
from appliance.store.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="write checkpoints, their bundles and every blob they need to DEST (resumable)")
    p.add_argument("root", type=Path, metavar="ROOT", help="store root directory")
    p.add_argument("dest", type=Path, metavar="DEST", help="destination directory (e.g. a FAT/exFAT USB stick)")
    p.add_argument(
        "--generation", type=int, action="append", metavar="N", help="export exactly this generation (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="verify and commit a checkpoint from SRC into the inactive slot (resumable)")
    p.add_argument("root", type=Path, metavar="ROOT", help="store root directory")
    p.add_argument("src", type=Path, metavar="SRC", help="a directory written by `appliance export`")
    p.add_argument("--generation", type=int, metavar="N", help="import exactly this generation (default: newest)")
    p.add_argument("--config", type=Path, metavar="NODE.json", help="node configuration (its anti-rollback floor)")
    p.add_argument(
        "--key",
        type=Path,
        metavar="KEYFILE",
        help="encrypted store: signs the re-sealed copy of a plain checkpoint (docs/design.md §14.10)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=cmd_import)


def _open_store(root: Path) -> Store:
    store = Store.open(root)
    store.good_provider = SlotStates(store.storage, store.limits).good_generations
    return store


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    from appliance.transfer import export_checkpoints, select_for_export
    from appliance.transfer.export import plan_export_bytes

    store = _open_store(args.root)
    opened = select_for_export(store, args.generation)
    dest: Path = args.dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {dest}: {exc.strerror}", remedy="pass a writable directory") from exc
    with out.progress(plan_export_bytes(opened), "export") as progress:
        result = export_checkpoints(store, LocalStorage(dest), opened, progress)
    data = {"dest": str(dest), **result.to_dict()}
    out.result(data, _export_text)
    return 0


def _export_text(d: dict[str, Any]) -> str:
    gens = ", ".join(str(g) for g in d["generations"])
    return (
        f"exported generation(s) {gens} to {d['dest']}: {d['blobs']} blobs, {human_bytes(d['bytes_total'])} "
        f"({d['blobs_written']} written, {d['blobs_skipped']} already there and verified) in {d['seconds']:.2f} s"
    )


def cmd_import(args: argparse.Namespace, out: Output) -> int:
    from appliance.transfer import import_checkpoint, inspect_source

    store = _open_store(args.root)
    floor = 0
    if args.config is not None:
        from appliance.node.config import load_config
        from appliance.node.floor import open_floor

        floor = open_floor(load_config(args.config)).read()
    if not args.src.is_dir():
        raise UsageError(f"{args.src} is not a directory", remedy="pass the directory `appliance export` wrote")
    source = LocalStorage(args.src)
    plan = inspect_source(store, source, generation=args.generation, floor=floor)
    out.note(
        f"generation {plan.generation} of {plan.verified.manifest.model!r}, signed by "
        f"{', '.join(k[:12] for k in plan.verified.keyids)}: {len(plan.blobs)} blobs, {human_bytes(plan.total_bytes)}"
    )
    if store.config.encrypt:  # ciphertext copied only under this store's key; plain checkpoints re-sealed
        from appliance.signing import SigningKey
        from appliance.transfer.reseal import import_sealed

        keys = [SigningKey.load(args.key)] if args.key is not None else []
        with out.progress(plan.verified.manifest.raw_bytes, "import") as progress:
            sealed = import_sealed(store, source, keys, floor=floor, progress=progress, plan=plan)
        out.result(
            {"src": str(args.src), **sealed}, lambda d: f"imported into {d['slot']}/{d['generation']}: {d['mode']}"
        )
        return 0
    with out.progress(plan.total_bytes, "import") as progress:
        result = import_checkpoint(store, source, floor=floor, progress=progress, plan=plan)
    out.result({"src": str(args.src), **result.to_dict()}, _import_text)
    return 0


def _import_text(d: dict[str, Any]) -> str:
    if d["already"]:
        return f"generation {d['generation']} is already committed in slot {d['slot']}; nothing to do"
    return (
        f"imported generation {d['generation']} into slot {d['slot']}: {d['blobs']} blobs "
        f"({d['from_source']} from {d['src']}, {d['from_other_slot']} from the other slot, {d['kept']} kept), "
        f"{human_bytes(d['bytes_from_source'])} read from the source in {d['seconds']:.2f} s"
    )
