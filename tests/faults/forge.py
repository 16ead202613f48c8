"""What an attacker with write access to the store (or a signing key) can plant: real files, real formats.

``Victim`` is a real store on disk with a few honest commits. ``plant`` writes a signed bundle
and a matching commit record as a new generation in a slot, the way a commit would, so a test
can vary exactly one thing (signer, manifest field, record field) and watch boot refuse it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from appliance.crypto import KekSource
from appliance.errors import ManifestError
from appliance.format.canonical import canonical_bytes
from appliance.format.commit import CommitRecord
from appliance.format.digest import Digest
from appliance.format.manifest import Manifest
from appliance.format.statement import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Signature,
    bundle_bytes,
    pae,
    statement_payload,
)
from appliance.signing import SigningKey, sign_manifest
from appliance.storage import write_durable
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.store import Store

from .boot import BOOT, BootOutcome
from .model import FRAME, MODEL_ID, History


class Victim:
    """A store at ``root`` with ``commits`` honest generations (odd in slot A, even in slot B)."""

    def __init__(self, root: Path, history: History, commits: int = 3, kek: KekSource | None = None) -> None:
        self.root = root
        self.history = history
        self.signer = SigningKey.generate()
        config = StoreConfig(model=MODEL_ID, frame_size=FRAME, encrypt=kek is not None)  # kek: an encrypted store
        self.store = Store.init(root, [self.signer.public], config, kek=kek)
        for step in range(1, commits + 1):
            self.store.commit(history.sources(step), [self.signer], {"step": step})
        self.newest = commits

    def reopen(self) -> Store:
        self.store = Store.open(self.root)
        return self.store

    def boot(self) -> BootOutcome:
        return BOOT(self.store.storage, self.store.config, self.store.trust)

    def manifest(self, generation: int) -> Manifest:
        return self.store.select(generation=generation).opened.verified.manifest

    def slot_of(self, generation: int) -> str:
        return "A" if generation % 2 else "B"

    def assert_boots_honest(self, generation: int) -> None:
        outcome = self.boot()
        assert outcome.generation == generation, f"boot yielded {outcome.describe()}, expected gen {generation}"
        assert outcome.contents == self.history.digest(generation)


def plant(
    victim: Victim,
    manifest: Manifest,
    keys: list[SigningKey],
    *,
    slot: str | None = None,
    generation: int | None = None,
    bundle: bytes | None = None,
    record: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """Write ``manifest`` signed by ``keys`` (or raw ``bundle``) plus a commit record; returns (slot, gen).

    The record is made to match the bundle exactly (digest, size, slot, generation) unless
    ``record`` overrides fields, so only what the test changes is wrong. Frames are not
    written: plant into the slot that already holds the frames the manifest names.
    """
    generation = manifest.generation if generation is None else generation
    slot = slot or holding_slot(victim, manifest)
    data = bundle if bundle is not None else (sign_manifest(manifest, keys) if keys else unsigned(manifest))
    return _write(victim, slot, generation, data, manifest.digest(), record or {})


def plant_predicate(
    victim: Victim, predicate: dict[str, Any], keys: list[SigningKey], slot: str = "A"
) -> tuple[str, int]:
    """Sign a manifest *dict* (valid or not) with ``keys`` and plant it as its generation in ``slot``."""
    bundle = sign_predicate(predicate, keys)
    return _write(victim, slot, predicate["generation"], bundle, Digest.of(_json(predicate)), {})


def _write(
    victim: Victim, slot: str, generation: int, bundle: bytes, manifest_digest: Digest, record: dict[str, Any]
) -> tuple[str, int]:
    fields = {
        "slot": slot,
        "generation": generation,
        "bundle_digest": Digest.of(bundle),
        "bundle_size": len(bundle),
        "manifest_digest": manifest_digest,
        "committed": "2026-01-01T00:00:00Z",
    } | record
    storage = victim.store.storage
    write_durable(storage, layout.bundle_path(slot, generation), bundle)
    write_durable(storage, layout.record_path(slot, generation), CommitRecord(**fields).to_bytes())
    return slot, generation


def holding_slot(victim: Victim, manifest: Manifest) -> str:
    """The slot that stores every frame ``manifest`` names."""
    storage = victim.store.storage
    frames = manifest.frame_index().values()
    return next(s for s in "AB" if all(storage.size(layout.frame_path(s, f.digest)) == f.size for f in frames))


def unsigned(manifest: Manifest) -> bytes:
    return bundle_bytes(statement_payload(manifest), [])


def sign_predicate(predicate: dict[str, Any], keys: list[SigningKey]) -> bytes:
    """A bundle over an arbitrary predicate, skipping all structural checks: a hostile or buggy signer."""
    subject = [{"name": predicate.get("model"), "digest": {"sha256": Digest.of(_json(predicate)).hex}}]
    payload = _json(
        {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": PREDICATE_TYPE, "predicate": predicate}
    )
    signed = pae(PAYLOAD_TYPE, payload)
    return bundle_bytes(payload, [Signature(k.keyid, k.sign(signed)) for k in keys])


def _json(value: Any) -> bytes:
    """Canonical JSON where possible; ASCII-escaped where it is not (e.g. lone surrogates)."""
    try:
        return canonical_bytes(value)
    except (ManifestError, UnicodeEncodeError):
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        except TypeError:  # a mutation put an int key into an object: keys of mixed types cannot be sorted
            return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


def newer(manifest: Manifest, generation: int, **changes: Any) -> Manifest:
    """``manifest`` re-issued as ``generation`` with ``changes`` (a forgery or a legit re-sign)."""
    return dataclasses.replace(manifest, generation=generation, **changes)
