"""Sign a manifest; verify a bundle. ``VerifiedManifest`` exists only after verification.

Owns: the only constructor path of ``VerifiedManifest`` and the order of checks:
size cap -> envelope parse -> signatures (trusted, not revoked, threshold) -> payload parse
(canonical, schema, structure) -> model compatibility -> key roles and lineage (``lineage``).
Does not own frame verification: a ``VerifiedManifest`` vouches for the manifest; each frame
is still hashed before it is decoded (``appliance.store.restore``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from appliance.errors import (
    CompatibilityError,
    RevokedKeyError,
    SignatureError,
    UntrustedKeyError,
)
from appliance.format.digest import Digest
from appliance.format.manifest import Manifest
from appliance.format.statement import (
    PAYLOAD_TYPE,
    Signature,
    bundle_bytes,
    pae,
    parse_bundle,
    parse_statement,
    statement_payload,
)
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.signing.keys import SigningKey
from appliance.signing.lineage import Authorization, authorize
from appliance.signing.trust import TrustStore

_TOKEN = object()


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signature, structure and model id were checked against a trust store."""

    manifest: Manifest
    bundle_digest: Digest
    keyids: tuple[str, ...]
    _token: object = field(default=None, repr=False, compare=False)
    authorization: Authorization | None = None  # always set by verify_bundle: signer role and release base

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError("VerifiedManifest is created only by appliance.signing.verify_bundle")


def sign_manifest(manifest: Manifest, keys: Sequence[SigningKey]) -> bytes:
    if not keys:
        raise SignatureError("no signing key given", remedy="pass --key KEYFILE")
    payload = statement_payload(manifest)
    signed = pae(PAYLOAD_TYPE, payload)
    return bundle_bytes(payload, [Signature(k.keyid, k.sign(signed)) for k in keys])


def verify_bundle(
    data: bytes,
    trust: TrustStore,
    *,
    expected_model: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    release_only: bool = False,
) -> VerifiedManifest:
    """Verify a bundle against ``trust``; raises the typed error of the first check that fails.

    ``release_only``: only release (or role-less) keys count, as for a lineage's release base.
    """
    bundle = parse_bundle(data, limits)
    signed = bundle.signed_bytes()
    good: set[str] = set()
    revoked = unknown = bad = 0
    for sig in bundle.signatures:
        if sig.keyid in trust.revoked:
            revoked += 1
            continue
        key = trust.get(sig.keyid)
        if key is None:
            unknown += 1
        elif key.verify(sig.sig, signed):
            good.add(sig.keyid)
        else:
            bad += 1
    if len(good) < trust.threshold:
        _refuse(len(good), trust.threshold, revoked=revoked, unknown=unknown, bad=bad)
    manifest = parse_statement(bundle.payload, limits)
    if expected_model is not None and manifest.model != expected_model:
        raise CompatibilityError(
            f"checkpoint is for model {manifest.model!r:.80}, this store holds {expected_model!r:.80}"
        )
    authorization = authorize(manifest, sorted(good), trust, release_only=release_only, limits=limits)
    return VerifiedManifest(manifest, Digest.of(data), tuple(sorted(good)), _TOKEN, authorization)


def _refuse(good: int, threshold: int, *, revoked: int, unknown: int, bad: int) -> None:
    detail = f"{good} valid trusted signature(s), {threshold} required"
    if bad:
        raise SignatureError(f"signature does not match the manifest ({detail}): forged or altered")
    if revoked:
        raise RevokedKeyError(f"manifest is signed by a revoked key ({detail})")
    if unknown:
        raise UntrustedKeyError(f"manifest is signed by a key not in the trust store ({detail})")
    raise SignatureError(f"not enough signatures ({detail})")
