"""Why a vendor's ``model.sig`` was refused, in words (exit 47 messages).

Owns: ``check_bundle_shape`` — the structure a model-signing bundle must have before the library
is asked (JSON object with ``verificationMaterial`` and a ``dsseEnvelope`` of ``payload``,
``payloadType`` and ``signatures``), refused naming what is missing; and ``explain`` — the
library's refusal of one vendor turned into a sentence: a file whose digest differs (signed and
actual SHA-256 in hex), files added or missing, a key other than the vendor's, a signature that
does not verify. The library's own text is kept only as a short, one-line ``detail`` suffix
with byte reprs written as hex, never as ``b'...'``. Does not own verification (``verify``).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from appliance.errors import VendorSignatureError
from appliance.format.provenance import MODEL_SIG
from appliance.format.shown import shown
from appliance.provenance.vendors import Vendor, key_sha256, load_ec_public_key

NOT_A_BUNDLE_REMEDY = (
    f"obtain the model and its {MODEL_SIG} again from the vendor: this file is damaged or was not written by "
    "`model_signing sign` (an OpenSSF model-signing signature bundle)"
)
_HASH_MISMATCH = re.compile(r"Hash mismatch for \\*'([^'\\]+)\\*'")
_FILES = re.compile(r"(Extra|Missing) files (?:found )?in model '[^']*': ([^\"'\]]+)")
_BYTES = re.compile(r"""\bb(['"])((?:\\.|(?!\1).)*)\1""")
_RAW_BYTES = re.compile(r"""\bb\\*['"]""")  # a bytes repr left (nested in another repr): cut there
_DETAIL_MAX = 160


def check_bundle_shape(path: Path, signature: bytes) -> dict[str, Any]:
    """The parsed bundle, or ``VendorSignatureError`` naming what makes it no model-signing bundle."""

    def refuse(why: str) -> VendorSignatureError:
        return VendorSignatureError(
            f"{path} is not an OpenSSF model-signing signature bundle: {why}", remedy=NOT_A_BUNDLE_REMEDY
        )

    try:
        text = signature.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(
            f"it is not UTF-8 text (byte {exc.start} is {signature[exc.start : exc.start + 1].hex()})"
        ) from None
    try:
        bundle = json.loads(text)
    except ValueError as exc:
        why = "it is empty" if not text.strip() else f"it is not JSON ({exc}; truncated or garbled?)"
        raise refuse(why) from None
    if not isinstance(bundle, dict):
        raise refuse(f"it holds a JSON {type(bundle).__name__}, not an object")
    for field in ("verificationMaterial", "dsseEnvelope"):
        if not isinstance(bundle.get(field), dict):
            raise refuse(f"the bundle lacks {field}" + (" (or it is not an object)" if field in bundle else ""))
    envelope = bundle["dsseEnvelope"]
    for field, kind in (("payload", str), ("payloadType", str), ("signatures", list)):
        if not isinstance(envelope.get(field), kind):
            raise refuse(
                f"its dsseEnvelope lacks {field}" + (" (or it has the wrong type)" if field in envelope else "")
            )
    if not envelope["signatures"]:
        raise refuse("its dsseEnvelope holds no signature")
    return bundle


def explain(exc: BaseException, vendor: Vendor, directory: Path, bundle: dict[str, Any]) -> str:
    """One vendor's refusal in words, with the library's text as a short hex-safe suffix."""
    text = str(exc)
    who = vendor_label(vendor)
    name, context = type(exc).__name__, head(exc)
    if name == "InvalidSignature":
        why = f"the signature does not verify with {who}: the signed statement was altered or another key signed it"
    elif "Key mismatch" in text:
        why = f"it was signed with a key other than {who}: the bundle's key hint names a different public key"
    elif (match := _HASH_MISMATCH.search(text)) is not None:
        why = _digest_differs(match.group(1), directory, bundle)
    elif (files := _FILES.findall(text)) != []:
        why = "; ".join(
            f"{', '.join(shown(n.strip()) for n in names.split(','))} "
            + (
                "is not covered by the signature (added after signing?)"
                if kind == "Extra"
                else "was signed but is missing"
            )
            for kind, names in files
        )
    elif "certificate" in text.lower() or "chain" in text.lower():
        why = f"its certificate does not chain to {who}"
    else:
        why, context = f"the model_signing library refused it for {who}", detail(exc)
    return f"{why} [{name}: {context}]" if context else f"{why} [{name}]"


def vendor_label(vendor: Vendor) -> str:
    """``the key of vendor 'acme' (sha256:0123abcd4567...)``, or its certificate chain."""
    if vendor.public_key:
        try:
            fingerprint = key_sha256(load_ec_public_key(vendor.public_key, vendor.name))[:16]
        except Exception:  # only for the message: vendors.json was validated when the vendor was added
            return f"the key of vendor {shown(vendor.name)}"
        return f"the key of vendor {shown(vendor.name)} (sha256:{fingerprint}...)"
    return f"the certificate chain of vendor {shown(vendor.name)}"


def detail(exc: BaseException) -> str:
    """The exception's text on one line, at most ~160 characters, byte reprs as hex, never empty."""
    text = " ".join(str(exc).split()) or "no message"
    text = _BYTES.sub(_hex_of_bytes_literal, text)
    if (raw := _RAW_BYTES.search(text)) is not None:
        text = text[: raw.start()].rstrip() + "..."
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


def head(exc: BaseException) -> str:
    """The library's phrase for the refusal (``Signature mismatch``), when a sentence already explains it."""
    return " ".join(str(exc).split(":", 1)[0].split())[:80]


def _hex_of_bytes_literal(match: re.Match[str]) -> str:
    try:
        value = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        return "<bytes>"
    return value.hex() if isinstance(value, bytes) else "<bytes>"


def _digest_differs(name: str, directory: Path, bundle: dict[str, Any]) -> str:
    signed = _signed_digests(bundle).get(name)
    try:
        actual = _sha256_file(directory / name)
    except OSError as exc:
        actual = f"unreadable ({exc.strerror})"
    else:
        actual = f"sha256:{actual}"
    return (
        f"file {shown(name)} differs from what the vendor signed: signed "
        f"{'sha256:' + signed if signed else 'unknown'}, actual {actual} (changed after signing)"
    )


def statement_of(bundle: Any) -> Any:
    """The in-toto statement a model-signing bundle's DSSE envelope carries (parsed, not verified).

    Raises ``KeyError``, ``TypeError`` or ``ValueError`` when the bundle does not have that layout."""
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def resource_digests(bundle: Any) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of the resources the bundle's statement lists (errors: ``statement_of``)."""
    statement = statement_of(bundle)
    return {str(r["name"]): str(r["digest"]).lower() for r in statement["predicate"]["resources"]}


def _signed_digests(bundle: dict[str, Any]) -> dict[str, str]:
    """``resource_digests``, or nothing when the layout is not that (only for a message)."""
    try:
        return resource_digests(bundle)
    except (KeyError, TypeError, ValueError):
        return {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
