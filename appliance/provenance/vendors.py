"""Vendor trust: whose OpenSSF model-signing signatures a store accepts on import.

Owns: ``Vendor``, ``VendorTrust``, the ``vendors.json`` file (path: ``store.json`` ->
``vendors``, default ``vendors.json`` in the store root; in production it belongs beside the
trust store on the read-only root file system) and the key/chain rules. Does not own
verifying signatures (``appliance.provenance.verify``).

A vendor is a name plus exactly one of: an EC public key (P-256 or P-384, PEM
SubjectPublicKeyInfo; ``model_signing sign key``) or a PEM certificate chain whose root(s)
anchor the vendor's signing certificates (``model_signing sign certificate``). Keyless
Sigstore signatures need the public-good infrastructure online and are not accepted offline.
``require_signature`` makes every ``appliance commit`` refuse a source without a valid one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import ApplianceError, StorageError, VendorTrustError
from appliance.format.canonical import canonical_bytes, require_keys, strict_loads
from appliance.format.shown import a_or_an
from appliance.limits import DEFAULT_LIMITS
from appliance.storage import LocalStorage, write_durable

VENDORS_FORMAT = "appliance.vendors"
VENDORS_VERSION = 1
CURVES = ("secp256r1", "secp384r1")  # P-256, P-384
MAX_VENDORS = 64
MAX_PEM_BYTES = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def key_sha256(public_key: ec.EllipticCurvePublicKey) -> str:
    """model_signing's key hint: SHA-256 of the PEM SubjectPublicKeyInfo, hex."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def load_ec_public_key(pem: bytes, source: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise VendorTrustError(f"{source} is not a PEM public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise VendorTrustError(
            f"{source} is {a_or_an(kind)} key; vendor keys are EC P-256 or P-384 (model_signing sign key)"
        )
    return key


def load_chain(pem: bytes, source: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise VendorTrustError(f"{source} is not a PEM certificate chain: {exc}") from exc
    if not certs:
        raise VendorTrustError(f"{source} holds no certificate")
    return certs


@dataclass(frozen=True)
class Vendor:
    name: str
    public_key: bytes = b""  # PEM, EC P-256/P-384
    certificate_chain: bytes = b""  # PEM, one or more certificates

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or _NAME.fullmatch(self.name) is None:
            raise VendorTrustError(f"vendor name {self.name!r:.70} must be 1-64 of A-Z a-z 0-9 . _ - (not first)")
        if bool(self.public_key) == bool(self.certificate_chain):
            raise VendorTrustError(f"vendor {self.name!r} needs exactly one of a public key or a certificate chain")
        if len(self.public_key) > MAX_PEM_BYTES or len(self.certificate_chain) > MAX_PEM_BYTES:
            raise VendorTrustError(f"vendor {self.name!r}: key material is larger than {MAX_PEM_BYTES} bytes")
        if self.public_key:
            load_ec_public_key(self.public_key, f"vendor {self.name!r} key")
        else:
            load_chain(self.certificate_chain, f"vendor {self.name!r} certificate chain")

    @property
    def method(self) -> str:
        return "key" if self.public_key else "certificate"

    def describe(self) -> str:
        if self.public_key:
            key = load_ec_public_key(self.public_key, self.name)
            return f"key {key.curve.name} sha256:{key_sha256(key)[:12]}"
        certs = load_chain(self.certificate_chain, self.name)
        return f"certificate chain of {len(certs)}: {', '.join(c.subject.rfc4514_string() for c in certs)[:200]}"

    def to_dict(self) -> dict[str, Any]:
        material = {"public_key": self.public_key} if self.public_key else {"certificate_chain": self.certificate_chain}
        return {"name": self.name} | {k: v.decode("ascii") for k, v in material.items()}

    @classmethod
    def from_dict(cls, obj: object) -> Vendor:
        d = require_keys(obj, "vendor", {"name"}, frozenset({"public_key", "certificate_chain"}))
        try:
            material = {k: str(d[k]).encode("ascii") for k in ("public_key", "certificate_chain") if k in d}
        except UnicodeEncodeError as exc:
            raise VendorTrustError(f"vendor {d['name']!r:.40}: key material is not ASCII PEM") from exc
        return cls(name=d["name"], **material)


@dataclass(frozen=True)
class VendorTrust:
    vendors: tuple[Vendor, ...] = ()
    require_signature: bool = False

    def __post_init__(self) -> None:
        names = [v.name for v in self.vendors]
        if len(set(names)) != len(names):
            raise VendorTrustError("a vendor is listed twice")
        if len(names) > MAX_VENDORS:
            raise VendorTrustError(f"at most {MAX_VENDORS} vendors")

    def with_vendor(self, vendor: Vendor) -> VendorTrust:
        if any(v.name == vendor.name for v in self.vendors):
            raise VendorTrustError(f"vendor {vendor.name!r} already exists", remedy="remove it first to replace it")
        return replace(self, vendors=(*self.vendors, vendor))

    def without(self, name: str) -> VendorTrust:
        kept = tuple(v for v in self.vendors if v.name != name)
        if len(kept) == len(self.vendors):
            raise VendorTrustError(f"no vendor named {name!r}", remedy="list them with `appliance vendor ROOT`")
        return replace(self, vendors=kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VENDORS_FORMAT,
            "version": VENDORS_VERSION,
            "require_signature": self.require_signature,
            "vendors": [v.to_dict() for v in self.vendors],
        }

    @classmethod
    def from_dict(cls, obj: object) -> VendorTrust:
        try:
            d = require_keys(obj, "vendors.json", {"format", "version", "require_signature", "vendors"})
            if d["format"] != VENDORS_FORMAT or d["version"] != VENDORS_VERSION:
                raise VendorTrustError("vendors.json is not a v1 vendor trust file")
            if not isinstance(d["require_signature"], bool) or not isinstance(d["vendors"], list):
                raise VendorTrustError("vendors.json: require_signature must be a boolean, vendors a list")
            return cls(tuple(Vendor.from_dict(v) for v in d["vendors"]), d["require_signature"])
        except VendorTrustError:
            raise
        except ApplianceError as exc:
            raise VendorTrustError(f"vendors.json is malformed: {exc.problem}") from exc


def load_vendors(path: Path) -> VendorTrust:
    """The vendor trust at ``path``; no file means no vendors and no requirement."""
    try:
        data = LocalStorage(path.parent).read(path.name, DEFAULT_LIMITS.config_max_bytes)
    except FileNotFoundError:
        return VendorTrust()
    except (StorageError, ApplianceError) as exc:
        raise VendorTrustError(f"cannot read vendor trust {path}: {exc.problem}") from exc
    try:
        obj = strict_loads(
            data, what=str(path), max_bytes=DEFAULT_LIMITS.config_max_bytes, max_depth=DEFAULT_LIMITS.json_max_depth
        )
    except ApplianceError as exc:
        raise VendorTrustError(f"vendor trust {path} is not valid JSON: {exc.problem}") from exc
    return VendorTrust.from_dict(obj)


def save_vendors(path: Path, trust: VendorTrust) -> None:
    write_durable(LocalStorage(path.parent), path.name, canonical_bytes(trust.to_dict()) + b"\n")


def vendors_path(root: Path, configured: str) -> Path:
    """Where a store's vendor trust lives: ``store.json`` -> ``vendors``, relative to the store root."""
    path = Path(configured)
    return path if path.is_absolute() else root / path
