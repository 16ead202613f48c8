"""Key types: ECDSA P-256 keys sign and verify checkpoints alongside Ed25519, in one trust store."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.errors import KeyFileError, SignatureError, TrustStoreError, UntrustedKeyError
from appliance.format.canonical import canonical_bytes
from appliance.signing import SigningKey, TrustStore, sign_manifest, verify_bundle
from appliance.signing.keys import ECDSA_P256, ED25519, KEY_TYPES, PublicKey
from tests.unit.factories import manifest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {t: SigningKey.generate(t) for t in KEY_TYPES}


def test_every_key_type_signs_a_checkpoint_its_trust_store_entry_verifies(keys: dict[str, SigningKey]) -> None:
    trust = TrustStore()
    for key in keys.values():
        trust = trust.with_key(key.public)
    assert {k.public.type for k in trust.keys} == {ED25519, ECDSA_P256}
    reread = TrustStore.from_dict(json.loads(canonical_bytes(trust.to_dict())))
    assert reread == trust
    for key in keys.values():
        verified = verify_bundle(sign_manifest(manifest(), [key]), reread)
        assert verified.keyids == (key.keyid,)


def test_an_altered_ecdsa_signature_or_payload_is_refused(keys: dict[str, SigningKey]) -> None:
    key = keys[ECDSA_P256]
    trust = TrustStore().with_key(key.public)
    bundle = json.loads(sign_manifest(manifest(), [key]))
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(SignatureError, match="forged or altered"):
        verify_bundle(json.dumps(bundle).encode(), trust)
    with pytest.raises(UntrustedKeyError):  # an ECDSA key is not trusted because an Ed25519 key is
        verify_bundle(sign_manifest(manifest(), [key]), TrustStore().with_key(keys[ED25519].public))


def test_key_files_of_each_type_round_trip_and_keep_their_id(keys: dict[str, SigningKey], tmp_path: Path) -> None:
    for name, key in keys.items():
        pub = key.save(tmp_path / name)
        assert SigningKey.load(tmp_path / name).keyid == key.keyid == PublicKey.load(pub).keyid
        assert PublicKey.load(pub).type == name


@pytest.mark.parametrize(
    "make",
    [lambda: ec.generate_private_key(ec.SECP384R1()), lambda: rsa.generate_private_key(65537, 2048)],
    ids=["p384", "rsa"],
)
def test_other_key_types_are_refused_naming_the_supported_ones(make: object, tmp_path: Path) -> None:
    private = make()  # type: ignore[operator]
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match="ecdsa-p256"):
        PublicKey.from_pem(pem)
    der = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError, match="ecdsa-p256"):
        SigningKey.from_pem(der)


def test_a_trust_entry_with_a_bad_point_or_two_key_types_is_refused(keys: dict[str, SigningKey]) -> None:
    d = TrustStore().with_key(keys[ECDSA_P256].public).to_dict()
    entry = d["keys"][0]
    entry[ECDSA_P256] = base64.b64encode(b"\x04" + b"\x01" * 64).decode()  # not on the curve
    with pytest.raises(TrustStoreError):
        TrustStore.from_dict(d)
    entry[ED25519] = base64.b64encode(b"\x00" * 32).decode()
    with pytest.raises(TrustStoreError, match="exactly one key type"):
        TrustStore.from_dict(d)
