"""The signed wrapper: in-toto Statement v1 in a DSSE envelope in a Sigstore-style bundle.

Owns: building the statement payload from a manifest, DSSE's pre-authentication encoding
(PAE), and strict parsing of bundle -> envelope -> statement -> manifest. Does not own the
cryptography (``appliance.signing`` signs and verifies PAE bytes with Ed25519 keys).

The containers are those OpenSSF model-signing uses, but the statement is ours and the stock
model_signing tool cannot verify it (docs/design.md §5.2): the bundle's
``dsseEnvelope`` carries ``payloadType = application/vnd.in-toto+json``, a base64 payload and
``signatures[{keyid, sig}]``; the payload is a canonical-JSON in-toto Statement whose single
subject is the model id with the SHA-256 of the canonical manifest, and whose predicate *is*
the manifest. The signature covers ``PAE(payloadType, payload)``, never re-serialised JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from appliance.errors import ManifestError, SignatureError
from appliance.format.canonical import canonical_bytes, require_keys, strict_loads
from appliance.format.digest import Digest
from appliance.format.manifest import Manifest
from appliance.limits import DEFAULT_LIMITS, Limits

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://appliance.dev/checkpoint-manifest/v1"
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the exact bytes a signature covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def statement_payload(manifest: Manifest) -> bytes:
    body = manifest.to_dict()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": manifest.model, "digest": {"sha256": Digest.of(canonical_bytes(body)).hex}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": body,
    }
    return canonical_bytes(statement)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Bundle:
    """A parsed but *unverified* bundle. Nothing in it may be trusted yet."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def signed_bytes(self) -> bytes:
        return pae(self.payload_type, self.payload)


def bundle_bytes(payload: bytes, signatures: list[Signature]) -> bytes:
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": signatures[0].keyid if signatures else ""},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in signatures],
        },
    }
    return canonical_bytes(bundle)


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ManifestError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ManifestError(f"{what} is not valid base64") from exc


def parse_bundle(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Bundle:
    """Parse the outer layers; refuses unsigned envelopes and unknown layouts."""
    obj = strict_loads(data, what="signed manifest bundle", max_bytes=limits.manifest_max_bytes, max_depth=8)
    d = require_keys(obj, "bundle", {"mediaType", "verificationMaterial", "dsseEnvelope"})
    if d["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise ManifestError(f"bundle mediaType {d['mediaType']!r:.60} is not {BUNDLE_MEDIA_TYPE}")
    env = require_keys(d["dsseEnvelope"], "dsseEnvelope", {"payload", "payloadType", "signatures"})
    if env["payloadType"] != PAYLOAD_TYPE:
        raise ManifestError(f"payloadType {env['payloadType']!r:.60} is not {PAYLOAD_TYPE}")
    raw_sigs = env["signatures"]
    if not isinstance(raw_sigs, list) or not raw_sigs:
        raise SignatureError("the manifest is not signed (no signatures in the envelope)")
    if len(raw_sigs) > MAX_SIGNATURES:
        raise ManifestError(f"envelope has {len(raw_sigs)} signatures, above the cap of {MAX_SIGNATURES}")
    sigs = []
    for raw in raw_sigs:
        s = require_keys(raw, "signature", {"keyid", "sig"})
        if not isinstance(s["keyid"], str) or len(s["keyid"]) > 128:
            raise ManifestError("signature.keyid must be a short string")
        sigs.append(Signature(s["keyid"], _b64(s["sig"], "signature.sig")))
    return Bundle(_b64(env["payload"], "dsseEnvelope.payload"), env["payloadType"], tuple(sigs))


_PARSED: OrderedDict[tuple[bytes, Limits], Manifest] = OrderedDict()
_PARSED_MAX = 16
_PARSED_LOCK = threading.Lock()


def parse_statement(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Parse a payload whose signature was already verified; checks it is canonical.

    Results are remembered per SHA-256 of ``payload`` (the last 16): one commit, its parent's
    selection, its own read-back and the slot's garbage collection parse the same few bundles
    several times, each parse costing ~0.1 s per 500 frames. The key is the exact bytes, so a
    remembered ``Manifest`` is what parsing them again would give; callers must treat it as
    immutable (it is frozen; its ``metadata`` is a ``Mapping`` to read, never to modify).
    """
    key = (hashlib.sha256(payload).digest(), limits)
    with _PARSED_LOCK:
        hit = _PARSED.get(key)
        if hit is not None:
            _PARSED.move_to_end(key)
            return hit
    manifest = _parse_statement(payload, limits)
    with _PARSED_LOCK:
        _PARSED[key] = manifest
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return manifest


def _parse_statement(payload: bytes, limits: Limits) -> Manifest:
    obj: Any = strict_loads(
        payload,
        what="statement",
        max_bytes=limits.manifest_max_bytes,
        max_depth=limits.json_max_depth,
    )
    d = require_keys(obj, "statement", {"_type", "subject", "predicateType", "predicate"})
    if d["_type"] != STATEMENT_TYPE or d["predicateType"] != PREDICATE_TYPE:
        raise ManifestError("statement is not an appliance checkpoint manifest (wrong _type or predicateType)")
    if canonical_bytes(obj) != payload:
        raise ManifestError("statement payload is not in canonical JSON form")
    manifest = Manifest.from_dict(d["predicate"], limits)
    subject = d["subject"]
    expected = [
        {
            "name": manifest.model,
            "digest": {"sha256": Digest.of(canonical_bytes(d["predicate"])).hex},
        }
    ]
    if subject != expected:
        raise ManifestError("statement subject does not name this manifest's model and digest")
    return manifest
