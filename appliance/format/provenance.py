"""The provenance record: which vendor signed the imported model directory, and over what digest.

Owns: ``Provenance`` (the optional manifest v2 field ``provenance``), its ``to_dict`` /
``from_dict`` and its structural rules (docs/design.md §5.5). Does not own verifying a
vendor signature (``appliance.provenance`` does, with the ``model_signing`` library).

A provenance record is written only after the directory's OpenSSF model-signing signature
(``model.sig``) verified against a vendor configured in the store; it is then covered by our
own manifest signature, so ``log``/``status`` and auditors can read it without the vendor's
key. Fields:

* ``format``: ``"openssf-model-signing"``; ``predicate_type``: the statement's predicate type.
* ``subject``: ``{"name", "sha256"}`` — the signed model name and root digest (SHA-256 over
  the resource digests in order, as model_signing computes it).
* ``resources``: how many files the signature covers; ``signature_sha256``: SHA-256 of the
  ``model.sig`` bytes that verified.
* ``signer``: ``{"vendor", "method": "key" | "certificate", "key_sha256"}`` plus, for
  certificates, ``"subject"``, ``"issuer"``, ``"certificate_sha256"`` of the signing certificate.
* ``verifier``: the library and version that verified it, e.g. ``"model_signing 1.1.1"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import get_int, get_str, require_keys
from appliance.format.digest import Digest

PROVENANCE_FORMAT = "openssf-model-signing"
MODEL_SIG = "model.sig"  # the signature file model_signing writes into (and ignores in) a model directory
METHODS = ("key", "certificate")
_SIGNER_KEYS = {"vendor", "method", "key_sha256"}
_CERT_KEYS = frozenset({"subject", "issuer", "certificate_sha256"})


@dataclass(frozen=True)
class Signer:
    vendor: str
    method: str
    key_sha256: Digest  # SHA-256 of the PEM SubjectPublicKeyInfo (model_signing's key hint)
    subject: str = ""  # certificate method only
    issuer: str = ""
    certificate_sha256: Digest | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ManifestError(f"provenance.signer.method {self.method!r:.20} is not one of {', '.join(METHODS)}")
        if (self.method == "certificate") != (self.certificate_sha256 is not None):
            raise ManifestError("provenance.signer: certificate fields go with method 'certificate' only")

    @property
    def identity(self) -> str:
        """One line naming who signed: the vendor, and the certificate subject or the key."""
        who = self.subject if self.method == "certificate" else f"key {self.key_sha256.short()}"
        return f"{self.vendor} ({who})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vendor": self.vendor, "method": self.method, "key_sha256": self.key_sha256.hex}
        if self.certificate_sha256 is not None:
            out |= {"subject": self.subject, "issuer": self.issuer, "certificate_sha256": self.certificate_sha256.hex}
        return out

    @classmethod
    def from_dict(cls, obj: object) -> Signer:
        d = require_keys(obj, "provenance.signer", _SIGNER_KEYS, _CERT_KEYS)
        cert = bool(_CERT_KEYS & d.keys())
        if cert and not set(d) >= _CERT_KEYS:
            raise ManifestError("provenance.signer: a certificate signer needs subject, issuer and certificate_sha256")
        return cls(
            vendor=get_str(d, "vendor", "provenance.signer", 128),
            method=get_str(d, "method", "provenance.signer", 16),
            key_sha256=Digest.parse(d["key_sha256"], "provenance.signer.key_sha256"),
            subject=get_str(d, "subject", "provenance.signer", 1024) if cert else "",
            issuer=get_str(d, "issuer", "provenance.signer", 1024) if cert else "",
            certificate_sha256=Digest.parse(d["certificate_sha256"], "provenance.signer.certificate_sha256")
            if cert
            else None,
        )


@dataclass(frozen=True)
class Provenance:
    subject_name: str
    subject_digest: Digest
    predicate_type: str
    resources: int
    signature_sha256: Digest
    signer: Signer
    verifier: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROVENANCE_FORMAT,
            "predicate_type": self.predicate_type,
            "subject": {"name": self.subject_name, "sha256": self.subject_digest.hex},
            "resources": self.resources,
            "signature_sha256": self.signature_sha256.hex,
            "signer": self.signer.to_dict(),
            "verifier": self.verifier,
        }

    def describe(self) -> str:
        return f"signed by {self.signer.identity}, model {self.subject_name!r:.60} sha256:{self.subject_digest.short()}"

    @classmethod
    def from_dict(cls, obj: object) -> Provenance:
        what = "provenance"
        keys = {"format", "predicate_type", "subject", "resources", "signature_sha256", "signer", "verifier"}
        d = require_keys(obj, what, keys)
        if d["format"] != PROVENANCE_FORMAT:
            raise ManifestError(f"provenance.format {d['format']!r:.40} is not {PROVENANCE_FORMAT!r}")
        subject = require_keys(d["subject"], "provenance.subject", {"name", "sha256"})
        return cls(
            subject_name=get_str(subject, "name", "provenance.subject", 1024),
            subject_digest=Digest.parse(subject["sha256"], "provenance.subject.sha256"),
            predicate_type=get_str(d, "predicate_type", what, 256),
            resources=get_int(d, "resources", what, 0, 10_000_000),
            signature_sha256=Digest.parse(d["signature_sha256"], "provenance.signature_sha256"),
            signer=Signer.from_dict(d["signer"]),
            verifier=get_str(d, "verifier", what, 128),
        )
