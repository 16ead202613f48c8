"""Encryption-at-rest operations on a whole store: switch on, status, rotate keys, crypto-erase.

Owns: ``enable`` (a keyring for a plain store; new commits are sealed), ``status`` (what the
keyring says and whether its KEK can be obtained now), ``rotate_kek`` (re-wrap, no frame
rewritten), ``rotate_data_key`` (a new data key + a compaction commit of the newest checkpoint
under it, then retention; retired keys are dropped once no committed checkpoint uses them)
and ``erase`` (crypto-erase). Does not own the keyring file (``keys``) or the commit
(``commit``); docs/design.md §14 has the rules.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np

from appliance.crypto import FileKek, KekSource
from appliance.errors import ApplianceError, StorageError, UsageError
from appliance.format.canonical import canonical_bytes
from appliance.signing import SigningKey
from appliance.storage import write_durable
from appliance.store import keys as keyring
from appliance.store import layout
from appliance.store.assets import AssetSource, DirectoryParts, read_assets
from appliance.store.discovery import OpenCheckpoint, open_checkpoint, scan
from appliance.store.encode import TensorSource
from appliance.store.lock import writer_lock
from appliance.store.partial import restore_selected
from appliance.store.store import Store


def enable(store: Store, kek: KekSource) -> dict[str, Any]:
    """Seal every later commit of ``store`` (a keyring is created under ``kek`` when it has none)."""
    with writer_lock(store.lock_path):
        if keyring.read_keyring(store.storage) is None:
            keyring.create_keyring(store.storage, kek)
        store.config = store.config.with_changes(encrypt=True)
        write_durable(store.storage, layout.STORE_CONFIG, canonical_bytes(store.config.to_dict()) + b"\n")
    return status(store)


def status(store: Store) -> dict[str, Any]:
    """The keyring as the store sees it; ``kek`` says whether the KEK is obtainable right now."""
    out: dict[str, Any] = {"encrypt_new_commits": store.config.encrypt}
    erased = keyring.erased_at(store.storage)
    try:
        ring = keyring.read_keyring(store.storage)
    except ApplianceError as exc:
        return out | {"keyring": "damaged", "problem": exc.problem}
    if ring is None:
        return out | {"keyring": "erased" if erased else "none", **({"erased": erased} if erased else {})}
    keys = keyring.keys_for(store.storage)
    try:
        keys.kek(ring)
        kek_state = "available"
    except ApplianceError as exc:
        kek_state = f"{type(exc).__name__}: {exc.problem}"
    return out | {
        "keyring": "present",
        "kek_provider": keys.source(ring).descriptor(),
        "kek": kek_state,
        "active_key": ring.active,
        "keys": [k.key_id for k in ring.keys],
        "used_by": _used_keys(store),
    }


def _used_keys(store: Store) -> dict[str, list[str]]:
    """Data key id -> the committed checkpoints (slot/gen) sealed under it ("plain" for unsealed ones)."""
    used: dict[str, list[str]] = {}
    for outcome in scan(store.storage, store.limits).records:
        if outcome.record is None:
            continue
        try:
            opened = open_checkpoint(
                store.storage, outcome.record, store.trust, store.config.model, store.limits, check_frames=False
            )
        except (ApplianceError, StorageError):
            continue
        enc = opened.verified.manifest.encryption
        used.setdefault(enc.key_id if enc else "plain", []).append(f"{opened.slot}/{opened.generation}")
    return used


def rotate_kek(store: Store, new: KekSource) -> dict[str, Any]:
    with writer_lock(store.lock_path):
        keyring.rotate_kek(store.storage, new)
    return status(store)


def _sources_of(store: Store, opened: OpenCheckpoint) -> tuple[list[TensorSource], DirectoryParts]:
    """The checkpoint's tensors (each restored verified when the commit loads it) and directory parts."""
    manifest = opened.verified.manifest

    def loader(name: str, nbytes: int) -> Any:
        def load() -> np.ndarray:
            out = np.empty(nbytes, np.uint8)
            restore_selected(store.storage, opened, {name: out}, deep=True)
            return out

        return load

    sources = [TensorSource(t.name, t.dtype, t.shape, loader(t.name, t.nbytes)) for t in manifest.tensors]
    assets = read_assets(store.storage, opened)
    executable = {a.path: a.executable for a in manifest.assets}
    parts = DirectoryParts(
        assets=tuple(AssetSource(p, len(data), _reader(data), executable[p]) for p, data in assets.items()),
        shards=manifest.shards,
        index_metadata=manifest.index_metadata,
    )
    return sources, parts


def _reader(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def rotate_data_key(store: Store, signers: Sequence[SigningKey]) -> dict[str, Any]:
    """A new active data key, the newest checkpoint re-committed (compaction) under it, old keys retired.

    The old data key stays in the keyring until no committed checkpoint is sealed under it
    (retention removes them as later commits arrive; ``erase --crypto`` removes everything).
    """
    if not store.config.encrypt:
        raise UsageError("this store does not seal its commits", remedy="switch it on first: `appliance key enable`")
    opened = store.select().opened
    keyring.add_data_key(store.storage)
    sources, parts = _sources_of(store, opened)
    manifest = opened.verified.manifest
    result, _ = store.commit(
        sources,
        signers,
        dict(manifest.metadata),
        policy=manifest.policy,
        full=True,
        directory=parts,
        provenance=manifest.provenance,
        allow_empty=not any(t.numel for t in manifest.tensors),
    )
    retired = retire_unused(store)
    return {"commit": result.to_dict(), "retired_keys": retired, **status(store)}


def retire_unused(store: Store) -> list[str]:
    with writer_lock(store.lock_path):
        return keyring.retire_data_keys(store.storage, set(_used_keys(store)))


def erase(store: Store, *, destroy_kek: bool = False) -> dict[str, Any]:
    """Crypto-erase: every wrapped data key destroyed (and the file KEK, if asked); frames stay, unreadable."""
    with writer_lock(store.lock_path):
        ring = None
        with contextlib.suppress(ApplianceError):  # a damaged keyring is destroyed all the same
            ring = keyring.read_keyring(store.storage)
        done = keyring.crypto_erase(store.storage)
        if destroy_kek and ring is not None and ring.kek.get("provider") == "file":
            done["kek_destroyed"] = FileKek(ring.kek["path"]).destroy()
    return done
