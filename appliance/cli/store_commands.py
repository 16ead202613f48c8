"""The store commands: keygen, init, trust, commit, verify, restore, log, status, gc.

Each function takes parsed arguments and an ``Output``, calls one operation, renders it and
returns an exit code (0 ok, 1 completed with warnings). Errors propagate to ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.cli.output import Output, human_bytes
from appliance.crypto import KekSource, create_missing, parse_kek_option
from appliance.errors import ConfigError, NoValidCheckpointError, TensorMismatchError, UsageError
from appliance.format.canonical import DuplicateKeyError, refuse_duplicates
from appliance.format.shown import shown
from appliance.format.validate import INT_REMEDY
from appliance.limits import DEFAULT_LIMITS
from appliance.signing import PublicKey, SigningKey, TrustStore

if TYPE_CHECKING:
    from appliance.provenance.sign import SignedDirectory
from appliance.store.config import StoreConfig
from appliance.store.store import Store

WARNINGS = 1


class _LongIntegerError(Exception):
    pass


def _meta_int(digits: str) -> int:
    """A JSON integer of --meta, refused in appliance's terms above the metadata cap (never Python's own)."""
    if len(digits.lstrip("-")) > DEFAULT_LIMITS.metadata_int_max_digits:
        raise _LongIntegerError(digits)
    return int(digits)


def parse_meta(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --meta file {value[1:]}: {exc}") from exc
    try:
        meta = json.loads(text, object_pairs_hook=refuse_duplicates, parse_int=_meta_int)
    except _LongIntegerError as exc:
        raise UsageError(
            f"--meta holds an integer of {len(exc.args[0].lstrip('-'))} decimal digits ({exc.args[0][:12]}...); "
            f"metadata integers have at most {DEFAULT_LIMITS.metadata_int_max_digits}",
            remedy=INT_REMEDY,
        ) from None
    except RecursionError as exc:  # the parser recurses; ~1,000 levels exhaust it (commit's cap is far lower)
        raise UsageError(
            "--meta is nested too deeply to be metadata any reader accepts",
            remedy="flatten the metadata (readers accept a few dozen levels; see docs/design.md §4.3)",
        ) from exc
    except DuplicateKeyError as exc:
        key = shown(exc.key, 60)
        raise UsageError(
            f"--meta has a duplicate key {key}: an object gives it twice, and appliance refuses rather than "
            "silently keep one of the values",
            remedy=f"give each key once: keep a single {key} in that object (merge the values or rename one)",
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"--meta is not valid JSON: {exc}",
            remedy="pass a JSON object, e.g. --meta '{\"step\": 5}'",
        ) from exc
    if not isinstance(meta, dict):
        raise UsageError("--meta must be a JSON object")
    return meta


def cmd_keygen(args: argparse.Namespace, out: Output) -> int:
    key = SigningKey.generate(getattr(args, "type", "ed25519"))
    pub = key.save(args.keyfile)
    out.result(
        {"keyfile": str(args.keyfile), "public_key": str(pub), "keyid": key.keyid, "type": key.type},
        lambda d: f"wrote {d['keyfile']} (private, mode 0600) and {d['public_key']}\n{d['type']} key id {d['keyid']}",
    )
    return 0


OPTION_OF_FIELD = {"model": "--model", "frame_size": "--frame-size", "policy": "--policy", "keep": "--keep"}


def config_from_options(**values: Any) -> StoreConfig:
    """A ``StoreConfig`` from command-line values: a bad value is a ``UsageError`` naming its option.

    (``StoreConfig`` itself raises ``ConfigError``, exit 18, whose remedy is about store.json:
    right for a store on disk, wrong for an option the operator just typed.)
    """
    try:
        return StoreConfig(**values)
    except ConfigError as exc:
        field = next((f for f in values if exc.problem.startswith((f"{f} ", f"{f}_"))), None)
        if field is None:
            raise
        option = OPTION_OF_FIELD.get(field, f"--{field.replace('_', '-')}")
        raise UsageError(
            f"{option} {values[field]!r:.60}: {exc.problem}", remedy=f"correct {option} (see `appliance init --help`)"
        ) from exc


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    encrypt = getattr(args, "encrypt", False)
    config = config_from_options(
        model=args.model, frame_size=args.frame_size, policy=args.policy, keep=args.keep, encrypt=encrypt
    )
    keys = [PublicKey.load(p) for p in args.trust]
    kek = _init_kek(args) if encrypt else None
    store = Store.init(args.root, keys, config, kek=kek)
    out.result(
        {
            "root": str(args.root),
            "model": config.model,
            "trusted_keys": [k.keyid for k in store.trust.keys],
            "encrypted": encrypt,
            **({"kek": kek.descriptor()} if kek is not None else {}),
        },
        lambda d: (
            f"initialised store {d['root']} for model {d['model']!r} trusting {len(d['trusted_keys'])} key(s)"
            + (f"; frames sealed, KEK {d['kek']}" if d["encrypted"] else "")
        ),
    )
    return 0


def _init_kek(args: argparse.Namespace) -> KekSource:
    """``--kek`` (default ``file:ROOT.kek``): an existing KEK is used, a missing file or credential created."""
    if getattr(args, "kek", None) is None and Path(f"{args.root}.kek").exists():
        raise UsageError(f"{args.root}.kek exists; name the KEK explicitly with --kek file:{args.root}.kek")
    return create_missing(parse_kek_option(args.kek or f"file:{args.root}.kek"))


def cmd_trust(args: argparse.Namespace, out: Output) -> int:
    store = Store.open(args.root)
    trust = store.trust
    role = None if args.role in (None, "none") else args.role
    models, device = tuple(args.model), args.device
    if args.action in ("add", "revoke", "role") and not args.value:
        raise UsageError(f"`trust {args.action}` needs a {'PUBKEY file' if args.action == 'add' else 'key id'}")
    if args.action == "add":
        trust = trust.with_key(PublicKey.load(args.value), args.comment or "", role=role, models=models, device=device)
    elif args.action == "revoke":
        trust = trust.revoke(args.value)
    elif args.action == "role":
        if args.role is None:
            raise UsageError("`trust role KEYID` needs --role release|device|none")
        trust = trust.with_role(_full_keyid(trust, args.value), role, models=models, device=device)
    if trust is not store.trust:
        store.save_trust(trust)
    data = trust.to_dict()
    out.result(data, _trust_text)
    return 0


def _full_keyid(trust: TrustStore, prefix: str) -> str:
    found = [k.keyid for k in trust.keys if k.keyid.startswith(prefix)]
    if len(found) != 1:
        raise UsageError(f"key id {prefix!r:.70} matches {len(found)} trusted keys; give more of it")
    return found[0]


def _trust_text(d: dict[str, Any]) -> str:
    def role(k: dict[str, Any]) -> str:
        if k.get("role") == "release":
            return "release(" + ",".join(k["models"]) + ")"
        if k.get("role") == "device":
            return f"device({k['device']})"
        return "unrestricted"

    return "\n".join(
        [f"trust store v{d['version']}, threshold {d['threshold']}"]
        + [f"trusted  {k['keyid']}  {role(k)}  {k['comment']}" for k in d["keys"]]
        + [f"revoked  {k}" for k in d["revoked"]]
    )


def cmd_commit(args: argparse.Namespace, out: Output) -> int:
    from appliance.api import open_for_commit
    from appliance.sources.model_dir import check_layout
    from appliance.store.commit import check_metadata

    store = Store.open(args.root)
    key = SigningKey.load(args.key)
    meta = check_metadata(parse_meta(args.meta))  # input errors (10) before the source's and the store's
    # vendor signature verified, then opened; every source defect is refused before anything is written
    provenance, model, parts = open_for_commit(store, args.source)
    try:
        check_layout(store, model, args.source, new_layout=args.new_layout)
        total = model.raw_bytes + sum(a.size for a in parts.assets)
        with out.progress(total, "commit") as progress:
            result, gc = store.commit(
                model.sources,
                [key],
                meta,
                policy=args.policy,
                full=args.full,
                progress=progress,
                directory=parts,
                provenance=provenance,
                allow_empty=args.allow_empty,
                reread=True,  # a source file written through a shared mapping leaves no identity trace
            )
    finally:
        model.close()
    data = result.to_dict() | {"gc": gc.to_dict(), "assets": len(parts.assets), "shards": len(parts.shards)}
    data["dropped_header_keys"] = model.dropped_header_keys  # said, never silent (README exit 25, design §4.5)
    if provenance is not None:
        data["provenance"] = provenance.to_dict() | {"summary": provenance.describe()}
    out.result(data, _commit_text)
    return 0


def _commit_text(d: dict[str, Any]) -> str:
    ratio = d["raw_bytes"] / d["stored_bytes"] if d["stored_bytes"] else 0.0
    kinds = d["frame_kinds"]
    return (
        (
            f"committed generation {d['generation']} into slot {d['slot']} "
            f"(parent {d['parent_generation'] or '-'}) in {d['seconds']:.2f} s\n"
            f"  {human_bytes(d['raw_bytes'])} raw, {human_bytes(d['stored_bytes'])} stored (ratio {ratio:.2f}), "
            f"{human_bytes(d['written_bytes'])} written\n"
            f"  frames: {d['frames']} ({kinds['full']} full, {kinds['delta']} delta, {kinds['reused']} reused; "
            f"{kinds['copied']} copied from the other slot)"
        )
        + (f"\n  vendor signature verified: {d['provenance']['summary']}" if "provenance" in d else "")
        + (
            f"\n  note: dropped the source's header keys {', '.join(d['dropped_header_keys'])[:300]} (appliance's "
            "namespace: they describe an earlier restore; restore writes its own)"
            if d.get("dropped_header_keys")
            else ""
        )
    )


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    store = Store.open(args.root)
    with out.progress(None, "verify") as progress:
        report = store.verify(deep=args.deep, progress=progress)
    data = report.to_dict()

    def text(d: dict[str, Any]) -> str:
        lines = [f"{'deep ' if d['deep'] else ''}verification of {len(d['checkpoints'])} checkpoint(s):"]
        for c in d["checkpoints"]:
            state = "ok" if c["ok"] else f"FAILED ({c['error_class']}: {c['error']})"
            lines.append(f"  slot {c['slot']} generation {c['generation']}: {state}")
        newest = d["newest_valid"]
        lines.append(
            f"newest valid: slot {newest['slot']} generation {newest['generation']}"
            if newest
            else "NO VALID CHECKPOINT"
        )
        return "\n".join(lines)

    out.result(data, text)
    if report.newest_valid is None:  # one JSON document per run: the report says why
        return NoValidCheckpointError.exit_code
    return 0 if report.all_ok else WARNINGS


def restore_target(value: str) -> tuple[Path, bool]:
    """``--out``: (path, is a directory) — a trailing slash or an existing directory means a directory."""
    path = Path(value)
    return path, value.endswith(("/", "\\")) or path.is_dir()


def check_restore_target(target: Path, as_dir: bool) -> None:
    """Refuse an ``--out`` that cannot be written, before anything is read or verified.

    Raises ``UsageError`` naming the path part that is wrong: a file where a directory must be,
    a missing parent for a file output (a directory output creates its parents), or a parent
    this process cannot write.
    """
    parent = target if as_dir else target.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {target}: {existing} is a file, not a directory", remedy="choose another --out path")
    if not as_dir and existing != parent:
        raise UsageError(
            f"--out {target}: the directory {parent} does not exist",
            remedy="create it first, or end --out with a slash (DIR/) to restore a whole model directory",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {target}: {existing} is not writable by this user", remedy="choose a writable path")


def cmd_restore(args: argparse.Namespace, out: Output) -> int:
    from appliance import api
    from appliance.sources import model_dir

    store = Store.open(args.root)
    target, as_dir = restore_target(args.out)
    check_restore_target(target, as_dir)
    notes = _out_file_warnings(target) if not as_dir else []
    max_shard = model_dir.parse_size(args.max_shard_size) if args.max_shard_size else None
    if max_shard is not None and not as_dir:
        raise UsageError("--max-shard-size applies to a directory restore", remedy="end --out with a slash: DIR/")
    names = model_dir.name_filter(args.tensors) if args.tensors else None
    if args.sign_model:
        _check_sign_model(args.sign_model, as_dir)
    with out.progress(None, "restore") as progress:
        try:
            loaded = api.load(
                store,
                generation=args.generation,
                deep=args.deep,
                progress=None if names else progress,
                names=names,
                assets=as_dir,
            )
        except TensorMismatchError as exc:  # without `into`, only the selection can mismatch
            if names is None:
                raise
            raise UsageError(
                f"--tensors {' '.join(args.tensors)!r:.200}: {exc.problem}",
                remedy="check the patterns: shell-style globs matched against whole tensor names, case-sensitive, "
                "`*` also matches dots (e.g. 'model.layers.0.*'); `appliance log ROOT --tensors` lists the names",
            ) from exc
    assert loaded.manifest is not None
    ours = model_dir.appliance_header(loaded.generation, loaded.manifest_digest, loaded.metadata)
    written: dict[str, Any] = {}
    if as_dir:
        written = model_dir.write_directory(
            target, loaded.tensors, loaded.assets, loaded.manifest, ours=ours, max_shard_bytes=max_shard
        )
    else:
        model_dir.write_file(target, loaded.tensors, loaded.manifest, ours)
    signed = _sign_restored(target, args.sign_model) if args.sign_model else None
    data = {
        "out": str(target),
        "directory": as_dir,
        "tensors": len(loaded.tensors),
        "written": written,
        "restore": loaded.stats.to_dict(),
        "fell_back": loaded.fell_back,
        "failures": [f.describe() for f in loaded.failures],
        "metadata": loaded.metadata,
        "warnings": notes + (_empty_restore_warning(loaded.generation) if not loaded.tensors and not names else []),
    } | ({"model_sig": signed.to_dict()} if signed else {})

    def text(d: dict[str, Any]) -> str:
        r = d["restore"]
        lines = [f"  skipped {f}" for f in d["failures"]] + [f"  warning: {w}" for w in d["warnings"]]
        lines.append(
            f"restored generation {r['generation']} from slot {r['slot']}: {human_bytes(r['raw_bytes'])} "
            f"verified in {r['seconds']:.3f} s ({r['gb_per_s']:.2f} GB/s) -> {d['out']}"
        )
        if "model_sig" in d:
            sig = d["model_sig"]
            lines.append(
                f"  signed {sig['resources']} files into {sig['model_sig']} (key sha256:{sig['key_sha256'][:12]})"
            )
        return "\n".join(lines)

    out.result(data, text)
    return WARNINGS if loaded.fell_back else 0


def _out_file_warnings(target: Path) -> list[str]:
    """What a file ``--out`` may not have meant: no ``.safetensors`` suffix, or a file it replaces."""
    notes = []
    if target.suffix != ".safetensors":
        notes.append(
            f"--out {target} has no .safetensors suffix: one safetensors FILE is written; "
            "end --out with a slash (DIR/) to restore a whole model directory"
        )
    if target.exists():
        notes.append(f"--out {target} existed and is replaced")
    return notes


def _empty_restore_warning(generation: int) -> list[str]:
    """A restore that wrote no tensors: the checkpoint was committed empty on purpose (``--allow-empty``)."""
    return [
        f"generation {generation} holds no tensors (it was committed with --allow-empty); "
        "`appliance log ROOT` lists the checkpoints, `--generation G` restores another"
    ]


def _check_sign_model(key_file: Path, as_dir: bool) -> None:
    """Refuse ``--sign-model`` up front (before restoring) when it cannot succeed."""
    from appliance.provenance.sign import check_signing_key

    if not as_dir:
        raise UsageError("--sign-model signs a restored directory", remedy="end --out with a slash: DIR/")
    check_signing_key(key_file)


def _sign_restored(target: Path, key_file: Path) -> SignedDirectory:
    """An OpenSSF model-signing ``model.sig`` over the restored directory (``appliance.provenance.sign``)."""
    from appliance.provenance.sign import sign_directory

    return sign_directory(target, key_file)


def cmd_log(args: argparse.Namespace, out: Output) -> int:
    entries = Store.open(args.root).log(tensors=getattr(args, "tensors", False))

    def text(d: dict[str, Any]) -> str:
        lines = []
        for e in d["checkpoints"]:
            if "error" in e:
                lines.append(f"gen {e['generation']:>6}  slot {e['slot']}  DAMAGED: {e['error']}")
                continue
            lines.append(
                f"gen {e['generation']:>6}  slot {e['slot']}  {e['created']}  {human_bytes(e['raw_bytes'])} raw  "
                f"{human_bytes(e['stored_bytes'])} stored  {e['frames']['delta']} delta frames  {e['policy']}"
                + (f"  {e['assets']} assets" if e.get("assets") else "")
                + f"  {_signed_text(e)}"
            )
            if "provenance" in e:
                lines.append(f"            vendor: {e['provenance']['summary']}")
            lines.extend(f"            {t['name']}  {t['dtype']}{t['shape']}" for t in e.get("tensor_list", []))
        return "\n".join(lines) or "no checkpoints"

    out.result({"checkpoints": entries}, text)
    return 0


def _signed_text(e: dict[str, Any]) -> str:
    if e.get("signer_role") is None:
        return f"REFUSED: {e.get('verify_error', 'not verified')}"
    return f"{e['signer_role']}-signed, release base gen {e['release_base']['generation']}"


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from appliance.provenance import load_vendors, vendors_path

    store = Store.open(args.root)
    status = store.status()
    vendors = load_vendors(vendors_path(Path(args.root), store.config.vendors))
    status["vendors"] = {"require_signature": vendors.require_signature, "names": [v.name for v in vendors.vendors]}

    def text(d: dict[str, Any]) -> str:
        lines = [f"store {d['root']}  model {d['model']!r}  policy {d['policy']}"]
        for name, s in d["slots"].items():
            state = "available" if s["available"] else "MISSING"
            gens = ", ".join(map(str, s["generations"])) or "empty"
            lines.append(f"  slot {name}: {state}; generations {gens}; free {human_bytes(s['free_bytes'])}")
        newest = d["newest_valid"]
        lines.append(
            f"newest valid: {newest['slot']}/{newest['generation']} ({_signed_text(newest)})"
            if newest
            else "NO VALID CHECKPOINT"
        )
        if newest and "provenance" in newest:
            lines.append(f"  vendor: {newest['provenance']['summary']}")
        lines.extend(f"  problem: {p}" for p in d["problems"])
        v = d["vendors"]
        lines.append(
            f"vendor signature on import: {'required' if v['require_signature'] else 'optional'}; "
            f"vendors: {', '.join(v['names']) or 'none'}"
        )
        nxt = d["next_commit"]
        lines.append(f"next commit: generation {nxt['generation']} into slot {nxt['slot']}")
        return "\n".join(lines)

    out.result(status, text)
    return WARNINGS if status["problems"] else 0


def cmd_gc(args: argparse.Namespace, out: Output) -> int:
    reports = Store.open(args.root).gc()
    data = {"slots": [r.to_dict() for r in reports]}
    out.result(
        data,
        lambda d: "\n".join(
            f"slot {r['slot']}: kept {r['kept']}, removed checkpoints {r['removed_checkpoints']}, "
            f"{r['removed_frames']} frames, {r['removed_other']} other files, freed {human_bytes(r['freed_bytes'])}"
            for r in d["slots"]
        ),
    )
    return 0
