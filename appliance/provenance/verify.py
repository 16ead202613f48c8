"""Verify an imported model directory's OpenSSF model-signing signature with the real library.

Owns: ``check_source`` (the import gate ``appliance commit`` runs before reading a tensor) and
turning a verified ``model.sig`` into a ``Provenance`` record. Does not own the vendor list
(``vendors``) or the signature format: ``model_signing`` (PyPI ``model-signing`` 1.1.x) reads
the bundle, checks the ECDSA signature or certificate chain, re-hashes every file of the
directory and compares, exactly as ``model_signing verify key|certificate DIR --signature
DIR/model.sig`` does (file serialization, SHA-256, ``model.sig`` and git files ignored,
symlinks refused).

Rules: a directory with ``model.sig`` must verify against one of the store's vendors, else
``VendorSignatureError`` (47) — also when the store trusts no vendor at all, since an
unverifiable signature is not silently dropped. Without ``model.sig`` the import proceeds
unsigned unless the store requires a vendor signature. The files are hashed by the library and
then read again by the commit: ``appliance.api.open_for_commit`` records every file's identity
before the verification and refuses the commit (``SourceChangedError``, 20) if any differs once
the source is opened; the commit's own re-checks hold them from there to the bundle.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from appliance.errors import ModelSigningUnavailableError, VendorSignatureError
from appliance.format.digest import Digest
from appliance.format.provenance import MODEL_SIG, Provenance, Signer
from appliance.provenance.reasons import check_bundle_shape, detail, explain, resource_digests, statement_of
from appliance.provenance.vendors import Vendor, VendorTrust, key_sha256, load_ec_public_key

MAX_SIGNATURE_BYTES = 8 * 1024 * 1024
log = logging.getLogger(__name__)


def library() -> tuple[Any, str]:
    """The ``model_signing`` package and its version, or ``ModelSigningUnavailableError``."""
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise ModelSigningUnavailableError(f"the model_signing library cannot be imported: {exc}") from exc
    return model_signing, f"model_signing {model_signing.__version__}"


def check_source(source: Path, vendors: VendorTrust) -> Provenance | None:
    """The verified provenance of ``source``, ``None`` if it is unsigned and that is allowed."""
    if not source.is_dir():
        if vendors.require_signature:
            raise VendorSignatureError(
                f"{source} is a single file: it carries no model.sig, and this store requires a vendor signature",
                remedy="import the vendor's signed model directory (with its model.sig)",
            )
        return None
    data = _read_signature(source / MODEL_SIG)
    if data is None:
        if vendors.require_signature:
            raise VendorSignatureError(
                f"{source} carries no {MODEL_SIG}, and this store requires a vendor signature on every import",
                remedy="import the vendor's signed directory, or sign it: model_signing sign key DIR --private_key K",
            )
        return None
    if not vendors.vendors:
        raise VendorSignatureError(
            f"{source}/{MODEL_SIG} is a model-signing signature, but this store trusts no vendor to verify it",
            remedy="add the vendor (appliance vendor ROOT add NAME --key PUB.pem | --cert-chain CHAIN.pem), "
            f"or remove {MODEL_SIG} to import the directory unsigned",
        )
    return verify_directory(source, data, vendors)


def verify_directory(directory: Path, signature: bytes, vendors: VendorTrust) -> Provenance:
    """Verify ``signature`` (the bytes of ``model.sig``) over ``directory`` against each vendor in turn."""
    lib, version = library()
    bundle = check_bundle_shape(directory / MODEL_SIG, signature)  # in words, before the library's own parsing
    failures = []
    with tempfile.TemporaryDirectory(prefix="appliance-model-sig-") as tmp:
        sig_copy = Path(tmp) / MODEL_SIG
        sig_copy.write_bytes(signature)  # the bytes we hash are the bytes the library verifies
        for vendor in vendors.vendors:
            try:
                _verify_with(lib, vendor, directory, sig_copy, Path(tmp))
            except Exception as exc:  # the library raises ValueError, InvalidSignature, OpenSSL errors, ...
                failures.append(explain(exc, vendor, directory, bundle))
                continue
            return _provenance(signature, vendor, version)
    against = "" if len(failures) == 1 else f" against any of the store's {len(failures)} vendors"
    raise VendorSignatureError(f"{directory}/{MODEL_SIG} does not verify{against}: " + " | ".join(failures)[:2000])


def _verify_with(lib: Any, vendor: Vendor, directory: Path, sig: Path, tmp: Path) -> None:
    material = tmp / f"{vendor.name}.pem"
    material.write_bytes(vendor.public_key or vendor.certificate_chain)
    config = lib.verifying.Config()
    if vendor.public_key:
        config = config.use_elliptic_key_verifier(public_key=material)
    else:
        config = config.use_certificate_verifier(certificate_chain=[material])
    hashing = lib.hashing.Config().set_ignored_paths(paths=[Path(MODEL_SIG)], ignore_git_paths=True)
    config = config.set_hashing_config(hashing.set_allow_symlinks(False)).set_ignore_unsigned_files(False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the library prints warnings; keep --json output clean
        config.verify(directory, sig)
    if printed.getvalue().strip():
        log.warning("model_signing (vendor %s): %s", vendor.name, printed.getvalue().strip())


def _read_signature(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VendorSignatureError(f"{path} cannot be opened ({exc.strerror}); it must be a regular file") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise VendorSignatureError(f"{path} is not a regular file")
        data = f.read(MAX_SIGNATURE_BYTES + 1)
    if len(data) > MAX_SIGNATURE_BYTES:
        raise VendorSignatureError(f"{path} is larger than {MAX_SIGNATURE_BYTES} bytes")
    return data


def signed_file_digests(signature: bytes) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of every file a verified ``model.sig`` covers (its resources)."""
    try:
        return resource_digests(json.loads(signature))
    except (KeyError, TypeError, ValueError) as exc:
        raise VendorSignatureError(f"verified model.sig has an unexpected layout: {_layout(exc)}") from exc


def _layout(exc: Exception) -> str:
    """What of the statement's layout is wrong, in words (never a bare ``KeyError`` repr)."""
    if isinstance(exc, KeyError):
        return f"it lacks the field {exc.args[0]!r:.60}"
    return f"{type(exc).__name__}: {detail(exc)}"


def _provenance(signature: bytes, vendor: Vendor, verifier: str) -> Provenance:
    """The record of a signature the library has just verified (its fields, read once more)."""
    try:
        bundle = json.loads(signature)
        statement = statement_of(bundle)
        (subject,) = statement["subject"]
        resources = len(statement["predicate"]["resources"])
        return Provenance(
            subject_name=str(subject["name"])[:1024],
            subject_digest=Digest.parse(subject["digest"]["sha256"], "model.sig subject digest"),
            predicate_type=str(statement["predicateType"])[:256],
            resources=resources,
            signature_sha256=Digest.of(signature),
            signer=_signer(bundle, vendor),
            verifier=verifier,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VendorSignatureError(f"verified model.sig has an unexpected layout: {_layout(exc)}") from exc


def _signer(bundle: dict[str, Any], vendor: Vendor) -> Signer:
    if vendor.public_key:
        key = load_ec_public_key(vendor.public_key, vendor.name)
        return Signer(vendor.name, "key", Digest(key_sha256(key)))
    raw = bundle["verificationMaterial"]["x509CertificateChain"]["certificates"][0]["rawBytes"]
    leaf = x509.load_der_x509_certificate(base64.b64decode(raw))
    return Signer(
        vendor.name,
        "certificate",
        Digest(key_sha256(leaf.public_key())),  # type: ignore[arg-type]
        subject=leaf.subject.rfc4514_string()[:1024],
        issuer=leaf.issuer.rfc4514_string()[:1024],
        certificate_sha256=Digest(leaf.fingerprint(hashes.SHA256()).hex()),
    )
