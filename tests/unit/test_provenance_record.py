"""The manifest v2 field ``provenance``: exact round trip, strict parsing, v1 manifests stay v1."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from appliance.errors import ManifestError
from appliance.format.canonical import canonical_bytes
from appliance.format.manifest import Manifest
from appliance.format.provenance import Provenance, Signer
from tests.unit.factories import digest, manifest

pytestmark = pytest.mark.unit


def provenance(method: str = "key") -> Provenance:
    cert: dict[str, Any] = (
        {"subject": "CN=Acme Release", "issuer": "CN=Acme Root", "certificate_sha256": digest("cert")}
        if method == "certificate"
        else {}
    )
    return Provenance(
        subject_name="tiny-gpt2",
        subject_digest=digest("root"),
        predicate_type="https://model_signing/signature/v1.0",
        resources=7,
        signature_sha256=digest("sig"),
        signer=Signer("acme", method, digest("key"), **cert),
        verifier="model_signing 1.1.1",
    )


@pytest.mark.parametrize("method", ["key", "certificate"])
def test_a_manifest_with_provenance_is_v2_and_round_trips_exactly(method: str) -> None:
    m = manifest(provenance=provenance(method))
    d = m.to_dict()
    assert d["version"] == 2 and d["provenance"]["signer"]["method"] == method
    back = Manifest.from_dict(d)
    assert back == m and back.provenance == m.provenance
    assert canonical_bytes(back.to_dict()) == canonical_bytes(d) and back.digest() == m.digest()


def test_a_manifest_without_provenance_omits_the_field() -> None:
    assert "provenance" not in manifest().to_dict()


def test_a_v1_manifest_cannot_carry_provenance() -> None:
    d = manifest(provenance=provenance()).to_dict()
    d["version"] = 1
    with pytest.raises(ManifestError, match="v1 manifest cannot hold|unknown field"):
        Manifest.from_dict(d)


def test_a_v2_manifest_without_provenance_keeps_its_version_and_bytes() -> None:
    d = manifest().to_dict()
    d["version"] = 2
    back = Manifest.from_dict(d)
    assert canonical_bytes(back.to_dict()) == canonical_bytes(d)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["format"], "sigstore", "is not"),
        (["signer", "method"], "pgp", "not one of"),
        (["subject", "sha256"], "ABC", "not a lowercase hex"),
        (["resources"], -1, "integer"),
        (["extra"], 1, "unknown field"),
        (["signer", "subject"], "CN=x", "certificate"),
    ],
)
def test_malformed_provenance_is_refused(path: list[str], value: object, message: str) -> None:
    d = manifest(provenance=provenance()).to_dict()
    target = d["provenance"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(d)


def test_certificate_fields_go_with_the_certificate_method_only() -> None:
    with pytest.raises(ManifestError, match="certificate fields"):
        dataclasses.replace(provenance("key").signer, certificate_sha256=digest("c"))
