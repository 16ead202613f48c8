"""Signatures and the trust store: only a manifest signed by a trusted, unrevoked key is used."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from appliance.errors import (
    CompatibilityError,
    KeyFileError,
    ManifestError,
    RevokedKeyError,
    SignatureError,
    TrustStoreError,
    UntrustedKeyError,
)
from appliance.format.canonical import canonical_bytes
from appliance.format.statement import PAYLOAD_TYPE, Signature, bundle_bytes, pae, statement_payload
from appliance.signing import SigningKey, TrustStore, VerifiedManifest, sign_manifest, verify_bundle
from appliance.signing.keys import PublicKey
from tests.unit.factories import manifest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def trust(key: SigningKey) -> TrustStore:
    return TrustStore().with_key(key.public)


def test_signed_manifest_verifies_and_yields_the_same_manifest(key: SigningKey, trust: TrustStore) -> None:
    m = manifest()
    verified = verify_bundle(sign_manifest(m, [key]), trust, expected_model="test-model")
    assert verified.manifest == m
    assert verified.keyids == (key.keyid,)


def test_verified_manifest_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError, match="only by"):
        VerifiedManifest(manifest(), manifest().digest(), ())


def test_arbitrary_manifest_signed_by_a_stranger_is_refused(trust: TrustStore) -> None:
    with pytest.raises(UntrustedKeyError):
        verify_bundle(sign_manifest(manifest(), [SigningKey.generate()]), trust)


def test_unsigned_envelope_is_refused(trust: TrustStore) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle(bundle_bytes(statement_payload(manifest()), []), trust)


def test_signature_by_a_revoked_key_is_refused(key: SigningKey, trust: TrustStore) -> None:
    with pytest.raises(RevokedKeyError):
        verify_bundle(sign_manifest(manifest(), [key]), trust.revoke(key.keyid))


def test_wrong_model_is_refused(key: SigningKey, trust: TrustStore) -> None:
    with pytest.raises(CompatibilityError, match="another model|for model"):
        verify_bundle(sign_manifest(manifest(), [key]), trust, expected_model="other-model")


def _envelope(data: bytes) -> dict[str, object]:
    return json.loads(data)


def test_tampered_payload_fails_the_signature(key: SigningKey, trust: TrustStore) -> None:
    bundle = _envelope(sign_manifest(manifest(), [key]))
    payload = base64.b64decode(bundle["dsseEnvelope"]["payload"])  # type: ignore[index]
    forged = payload.replace(b'"generation":3', b'"generation":9')
    assert forged != payload
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(forged).decode()  # type: ignore[index]
    with pytest.raises(SignatureError, match="does not match"):
        verify_bundle(json.dumps(bundle).encode(), trust)


def test_truncated_signature_is_refused(key: SigningKey, trust: TrustStore) -> None:
    bundle = _envelope(sign_manifest(manifest(), [key]))
    sig = bundle["dsseEnvelope"]["signatures"][0]  # type: ignore[index]
    sig["sig"] = base64.b64encode(base64.b64decode(sig["sig"])[:40]).decode()
    with pytest.raises(SignatureError):
        verify_bundle(json.dumps(bundle).encode(), trust)


def test_non_canonical_payload_is_refused_even_when_signed(key: SigningKey, trust: TrustStore) -> None:
    payload = json.dumps(json.loads(statement_payload(manifest())), indent=1).encode()
    bundle = bundle_bytes(payload, [Signature(key.keyid, key.sign(pae(PAYLOAD_TYPE, payload)))])
    with pytest.raises(ManifestError, match="canonical"):
        verify_bundle(bundle, trust)


def test_signature_over_reserialised_json_does_not_verify(key: SigningKey, trust: TrustStore) -> None:
    payload = statement_payload(manifest())
    wrong = key.sign(canonical_bytes(json.loads(payload)) + b" ")
    with pytest.raises(SignatureError):
        verify_bundle(bundle_bytes(payload, [Signature(key.keyid, wrong)]), trust)


def test_threshold_needs_distinct_trusted_signers(key: SigningKey) -> None:
    second = SigningKey.generate()
    trust = TrustStore((), frozenset(), 2).with_key(key.public).with_key(second.public)
    with pytest.raises(SignatureError, match="2 required"):
        verify_bundle(sign_manifest(manifest(), [key, key]), trust)
    assert verify_bundle(sign_manifest(manifest(), [key, second]), trust).keyids == tuple(
        sorted([key.keyid, second.keyid])
    )


def test_key_rotation_old_checkpoints_stop_verifying_after_revocation(key: SigningKey, trust: TrustStore) -> None:
    new = SigningKey.generate()
    old_bundle = sign_manifest(manifest(), [key])
    rotated = trust.with_key(new.public)
    assert verify_bundle(old_bundle, rotated).manifest.generation == 3
    new_bundle = sign_manifest(manifest(generation=4), [new])
    finished = rotated.revoke(key.keyid)
    assert verify_bundle(new_bundle, finished).manifest.generation == 4
    with pytest.raises(RevokedKeyError):
        verify_bundle(old_bundle, finished)
    with pytest.raises(TrustStoreError, match="revoked"):
        finished.with_key(key.public)


def test_trust_store_round_trip_and_tampered_keyid(key: SigningKey, trust: TrustStore) -> None:
    d = trust.revoke(key.keyid).with_key(SigningKey.generate().public).to_dict()
    assert TrustStore.from_dict(d).to_dict() == d
    d["keys"][0]["keyid"] = "0" * 64
    with pytest.raises(TrustStoreError, match="does not match"):
        TrustStore.from_dict(d)


@pytest.mark.parametrize("bad", [{}, {"format": "x"}, {"format": "appliance.trust", "version": 1, "keys": [{}]}, []])
def test_malformed_trust_store_is_refused(bad: object) -> None:
    with pytest.raises(TrustStoreError):
        TrustStore.from_dict(bad)


def test_key_files_round_trip_and_refuse_overwrite(tmp_path: Path) -> None:
    key = SigningKey.generate()
    pub = key.save(tmp_path / "k")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(tmp_path / "k").keyid == key.keyid
    assert PublicKey.load(pub).keyid == key.keyid
    with pytest.raises(KeyFileError, match="exists"):
        key.save(tmp_path / "k")


@pytest.mark.parametrize(
    "content", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(KeyFileError):
        SigningKey.load(tmp_path / "bad")
    with pytest.raises(KeyFileError):
        PublicKey.load(tmp_path / "bad")


def test_missing_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        SigningKey.load(tmp_path / "absent")
