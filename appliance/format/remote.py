"""Replication to object storage as pure rules: the signed head record, its envelope, retry timing.

Owns: ``HeadRecord`` (what the newest replicated or published checkpoint is; docs/design.md §11.4),
its DSSE envelope bytes and parsing (signatures are made and checked in ``appliance.remote.head``),
the anti-replay rule (``check_head_fresh``), the key names under a device or channel prefix,
``backoff_delay`` (exponential backoff with full jitter) and ``upload_pending`` (the one rule for
"an upload is pending", shared by ``appliance remote status``, its queue-depth metric and the
refusal of ``appliance remote prune``). Does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from appliance.errors import HeadError, ManifestError
from appliance.format.canonical import canonical_bytes, get_int, get_str, require_keys, strict_loads
from appliance.format.digest import Digest
from appliance.format.manifest import MAX_GENERATION
from appliance.format.portable import BundleName, parse_bundle_name

HEAD_FORMAT = "appliance.head"
HEAD_VERSION = 1
HEAD_PAYLOAD_TYPE = "application/vnd.appliance.head+json"
HEAD_KEY = "head.json"
HEAD_MAX_BYTES = 64 * 1024
MAX_HEAD_SIGNATURES = 16
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # device and channel names: lowercase, key- and path-safe


def check_name(value: str, what: str) -> str:
    """A device or channel name: 1-63 of ``a-z 0-9 -`` (a DNS label), safe as a key component."""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise ManifestError(f"{what} must be 1-63 characters of a-z, 0-9 and '-', got {value!r:.80}")
    return value


@dataclass(frozen=True)
class HeadRecord:
    """The newest checkpoint under one prefix: a device's replica or a fleet channel.

    ``sequence`` only ever increases under a prefix (the generation for a device replica; the
    publisher's counter for a channel); a reader that saw sequence S refuses any head below S.
    """

    kind: str  # "device" | "channel"
    name: str  # device id or channel name (the prefix's last component)
    model: str
    sequence: int
    generation: int
    bundle: BundleName
    manifest_digest: Digest
    issued: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": HEAD_FORMAT,
            "version": HEAD_VERSION,
            "kind": self.kind,
            "name": self.name,
            "model": self.model,
            "sequence": self.sequence,
            "generation": self.generation,
            "bundle": self.bundle.key,
            "manifest_digest": self.manifest_digest.hex,
            "issued": self.issued,
        }

    @classmethod
    def from_dict(cls, obj: object) -> HeadRecord:
        keys = {"format", "version", "kind", "name", "model", "sequence", "generation", "bundle", "manifest_digest"}
        d = require_keys(obj, "head", keys | {"issued"})
        if d["format"] != HEAD_FORMAT or d["version"] != HEAD_VERSION:
            raise HeadError(f"not a v{HEAD_VERSION} head record (format {d['format']!r:.40}, version {d['version']!r})")
        if d["kind"] not in ("device", "channel"):
            raise HeadError(f"head kind must be device or channel, got {d['kind']!r:.40}")
        bundle_key = get_str(d, "bundle", "head", 200)
        bundle = parse_bundle_name(bundle_key.removeprefix("bundles/")) if bundle_key.startswith("bundles/") else None
        if bundle is None:
            raise HeadError(f"head names no valid bundle key: {bundle_key!r:.120}")
        generation = get_int(d, "generation", "head", 1, MAX_GENERATION)
        if bundle.generation != generation:
            raise HeadError("head's generation differs from its bundle's name")
        return cls(
            kind=d["kind"],
            name=check_name(d["name"], "head.name"),
            model=get_str(d, "model", "head", 256),
            sequence=get_int(d, "sequence", "head", 1, MAX_GENERATION),
            generation=generation,
            bundle=bundle,
            manifest_digest=Digest.parse(d["manifest_digest"], "head.manifest_digest"),
            issued=get_str(d, "issued", "head", 64),
        )

    def payload(self) -> bytes:
        return canonical_bytes(self.to_dict())


@dataclass(frozen=True)
class HeadEnvelope:
    """A parsed DSSE envelope around a head: the payload and its (keyid, signature) pairs, unverified."""

    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]


def envelope_bytes(payload: bytes, signatures: list[tuple[str, bytes]]) -> bytes:
    return (
        canonical_bytes(
            {
                "payloadType": HEAD_PAYLOAD_TYPE,
                "payload": base64.b64encode(payload).decode("ascii"),
                "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode("ascii")} for k, s in signatures],
            }
        )
        + b"\n"
    )


def parse_envelope(data: bytes) -> HeadEnvelope:
    """Strict parse of a head envelope (size cap, canonical JSON, schema); signatures are not checked here."""
    if len(data) > HEAD_MAX_BYTES:
        raise HeadError(f"head is {len(data)} bytes, above the cap of {HEAD_MAX_BYTES}")
    try:
        obj = strict_loads(data.rstrip(b"\n"), what="head", max_bytes=HEAD_MAX_BYTES, max_depth=4)
        d = require_keys(obj, "head envelope", {"payloadType", "payload", "signatures"})
        if d["payloadType"] != HEAD_PAYLOAD_TYPE:
            raise HeadError(f"head envelope has payload type {d['payloadType']!r:.80}")
        sigs = d["signatures"]
        if not isinstance(sigs, list) or not 1 <= len(sigs) <= MAX_HEAD_SIGNATURES:
            raise HeadError(f"a head carries 1..{MAX_HEAD_SIGNATURES} signatures")
        pairs = []
        for s in sigs:
            sd = require_keys(s, "head signature", {"keyid", "sig"})
            pairs.append((get_str(sd, "keyid", "head signature", 64), base64.b64decode(sd["sig"], validate=True)))
        payload = base64.b64decode(d["payload"], validate=True)
    except (ManifestError, binascii.Error, TypeError) as exc:
        raise HeadError(f"head envelope is malformed: {getattr(exc, 'problem', exc)}") from exc
    return HeadEnvelope(payload, tuple(pairs))


def parse_head_payload(payload: bytes) -> HeadRecord:
    try:
        obj = strict_loads(payload, what="head", max_bytes=HEAD_MAX_BYTES, max_depth=4)
        if canonical_bytes(obj) != payload:
            raise HeadError("head payload is not canonical JSON")
        return HeadRecord.from_dict(obj)
    except ManifestError as exc:
        raise HeadError(f"head record is malformed: {exc.problem}") from exc


def check_head_fresh(head: HeadRecord, *, kind: str, name: str, model: str, last_seen: int, floor: int) -> None:
    """The anti-replay and binding rules a reader applies to a head whose signature verified."""
    if head.kind != kind or head.name != name:
        raise HeadError(f"head is for {head.kind} {head.name!r}, expected {kind} {name!r} (moved between prefixes?)")
    if head.model != model:
        raise HeadError(f"head is for model {head.model!r:.80}, this node runs {model!r:.80}")
    if head.sequence < last_seen:
        raise HeadError(
            f"head sequence {head.sequence} is older than the {last_seen} this node already saw: a replayed old head"
        )
    if head.generation < floor:
        raise HeadError(f"head names generation {head.generation}, below the anti-rollback floor {floor}")


def backoff_delay(attempt: int, *, base: float, cap: float, rand: float) -> float:
    """Seconds before retry ``attempt`` (1-based): full jitter over ``min(cap, base * 2**(attempt-1))``.

    ``rand`` is a uniform number in [0, 1) supplied by the caller (pure: no random source here).
    """
    ceiling = min(cap, base * float(2 ** min(max(attempt, 1) - 1, 62)))
    return float(max(0.0, min(1.0, rand)) * ceiling)


def upload_pending(*, replicated: int | None, pending_generation: int | None, newest_local: int | None) -> int | None:
    """The generation the replicator still has to upload, or ``None`` when the replica is up to date.

    Pending is either an upload the durable queue recorded as started and not finished
    (``pending_generation``: it may be in flight right now, or failed and waiting for its retry), or a
    committed local checkpoint newer than the replica's (``newest_local`` above ``replicated``: the
    replicator's next pass uploads it). One rule for every reader (docs/design.md §11.7): what
    ``appliance remote status`` calls pending is exactly what ``appliance remote prune`` refuses on.
    """
    if pending_generation is not None:
        return pending_generation
    if newest_local is not None and (replicated is None or newest_local > replicated):
        return newest_local
    return None
