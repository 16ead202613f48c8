"""Encryption at rest, the pure rules: key hierarchy, what is sealed, nonces, the keyring's form.

Owns (docs/design.md §14): the scheme name, the key-derivation labels, the associated data
that binds a sealed frame to its record, the sealed-frame layout, the rule for when a commit
may share frames with its parent, and the keyring (``Keyring``/``WrappedKey``) with its
``to_dict``/``from_dict``. Does no cryptography and no I/O: ``appliance.crypto`` implements
the primitives, ``appliance.store.keys`` reads and writes the keyring.

Key hierarchy::

    KEK (key-encryption key, 32 bytes)   from a key provider: 0400 file, systemd-creds, OP-TEE
     └─ wraps (AES-256-GCM, AAD = "appliance/v1 data-key-wrap" + key id) ─┐
    data key (32 random bytes per store; a new one per data-key rotation) ◄┘
     ├─ HKDF-SHA256(info=LABEL_SEAL)      -> frame sealing key (AES-256-GCM)
     ├─ HKDF-SHA256(info=LABEL_IDENTITY)  -> frame identity key (HMAC-SHA256 of raw bytes)
     ├─ HKDF-SHA256(info=LABEL_JOURNAL_SEAL) -> journal sealing key (AES-256-GCM, step payloads)
     └─ HKDF-SHA256(info=LABEL_KEY_ID)    -> key id (first 16 bytes, hex): names the key, binds it

Sealed frame (the *stored* bytes, whose SHA-256 names the file)::

    nonce (12 bytes, random) || AES-256-GCM ciphertext of the encoded frame || tag (16 bytes)

Nonces are drawn at random per seal (NIST SP 800-38D §8.2.2): a frame is sealed once and then
only copied, so the number of seals under one data key is the number of frames ever written;
the collision bound q^2 / 2^97 stays below 2^-32 up to q = 2^32 seals (16 PiB of 4 MiB frames).
Deterministic nonces were rejected: a nonce derived from the content would repeat for equal
content with different associated data only if the derivation were wrong, and buys nothing —
frame identity (dedup, deltas) already comes from the keyed raw digest, not from ciphertexts.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import canonical_bytes, get_str, require_keys

SCHEME = "aes-256-gcm+hmac-sha256/v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
KEY_ID_BYTES = 16
LABEL_SEAL = b"appliance/v1 frame-seal"
LABEL_IDENTITY = b"appliance/v1 frame-identity"
LABEL_KEY_ID = b"appliance/v1 key-id"
LABEL_WRAP = b"appliance/v1 data-key-wrap"
LABEL_KEK_CHECK = b"appliance/v1 kek-check"
LABEL_FRAME_AAD = b"appliance/v1 frame"
LABEL_JOURNAL_SEAL = b"appliance/v1 journal-seal"  # the adaptation journal's step payloads (§15.1)
KEYRING_FORMAT = "appliance.keyring"
KEYRING_VERSION = 1
MAX_KEYS = 64  # data keys a keyring may hold at once (rotations not yet compacted away)
PROVIDERS = ("file", "systemd-creds", "entry-point")


def _hex(value: object, what: str, nbytes: int) -> str:
    if not isinstance(value, str) or len(value) != 2 * nbytes or any(c not in "0123456789abcdef" for c in value):
        raise ManifestError(f"{what} must be {2 * nbytes} lowercase hex characters")
    return value


def _b64(value: object, what: str, nbytes: int) -> bytes:
    try:
        raw = base64.b64decode(value if isinstance(value, str) else "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(f"{what} is not base64") from exc
    if len(raw) != nbytes:
        raise ManifestError(f"{what} must hold {nbytes} bytes, not {len(raw)}")
    return raw


@dataclass(frozen=True)
class Encryption:
    """A manifest's ``encryption`` field (format v3): its frames are sealed under data key ``key_id``."""

    key_id: str
    scheme: str = SCHEME

    def __post_init__(self) -> None:
        _hex(self.key_id, "encryption.key_id", KEY_ID_BYTES)
        if self.scheme != SCHEME:
            raise ManifestError(f"encryption.scheme {self.scheme!r:.40} is not {SCHEME}")

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "key_id": self.key_id}

    @classmethod
    def from_dict(cls, obj: object) -> Encryption:
        d = require_keys(obj, "manifest.encryption", {"scheme", "key_id"})
        return cls(key_id=get_str(d, "key_id", "encryption", 64), scheme=get_str(d, "scheme", "encryption", 64))


def frame_aad(key_id: str, raw_digest: str, raw_size: int, codec: str, base: str | None) -> bytes:
    """Associated data of a sealed frame: everything its record says about it except the stored digest.

    A ciphertext moved under another record (another raw identity, size, codec, base or data
    key) fails authentication even where the stored digest would match.
    """
    fields = {"key_id": key_id, "raw_digest": raw_digest, "raw_size": raw_size, "codec": codec, "base": base}
    return LABEL_FRAME_AAD + b"\x00" + canonical_bytes(fields)


def wrap_aad(key_id: str) -> bytes:
    return LABEL_WRAP + b"\x00" + key_id.encode("ascii")


def may_share_frames(parent: Encryption | None, child: Encryption | None) -> bool:
    """Whether a commit may reuse or delta against its parent's frames (one key per manifest).

    Frame identities (raw digests) and seals are per data key, so a manifest never mixes keys:
    a commit under another key (or across the plain/encrypted line) re-encodes every frame.
    """
    if parent is None or child is None:
        return parent is None and child is None
    return parent.key_id == child.key_id


@dataclass(frozen=True)
class WrappedKey:
    """One data key, AES-256-GCM-sealed under the keyring's KEK (32 + 16 bytes)."""

    key_id: str
    nonce: bytes
    wrapped: bytes
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "nonce": base64.b64encode(self.nonce).decode(),
            "wrapped": base64.b64encode(self.wrapped).decode(),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, obj: object) -> WrappedKey:
        d = require_keys(obj, "keyring key", {"key_id", "nonce", "wrapped", "created"})
        return cls(
            key_id=_hex(d["key_id"], "keyring key_id", KEY_ID_BYTES),
            nonce=_b64(d["nonce"], "keyring nonce", NONCE_BYTES),
            wrapped=_b64(d["wrapped"], "keyring wrapped key", KEY_BYTES + TAG_BYTES),
            created=get_str(d, "created", "keyring key", 64),
        )


@dataclass(frozen=True)
class Keyring:
    """``ROOT/keyring.json`` (and its copy): the store's data keys, each wrapped under one KEK.

    ``kek`` names where the KEK comes from (``{"provider": "file", "path": ...}``,
    ``{"provider": "systemd-creds", "path": ..., "name": ...}``, ``{"provider": "entry-point",
    "name": "pkg.mod:factory"}``); ``kek_check`` (HMAC-SHA256 of a fixed label under the KEK,
    16 bytes) tells a wrong KEK from a damaged keyring. ``active`` seals new commits.
    """

    kek: dict[str, str]
    kek_check: str
    active: str
    keys: tuple[WrappedKey, ...]

    def __post_init__(self) -> None:
        if self.kek.get("provider") not in PROVIDERS:
            raise ManifestError(f"keyring kek.provider must be one of {', '.join(PROVIDERS)}")
        _hex(self.kek_check, "keyring kek_check", 16)
        ids = [k.key_id for k in self.keys]
        if not 1 <= len(ids) <= MAX_KEYS or len(set(ids)) != len(ids) or self.active not in ids:
            raise ManifestError(f"keyring must hold 1..{MAX_KEYS} distinct keys including the active one")

    def get(self, key_id: str) -> WrappedKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": KEYRING_FORMAT,
            "version": KEYRING_VERSION,
            "kek": dict(self.kek),
            "kek_check": self.kek_check,
            "active": self.active,
            "keys": [k.to_dict() for k in self.keys],
        }

    @classmethod
    def from_dict(cls, obj: object) -> Keyring:
        d = require_keys(obj, "keyring", {"format", "version", "kek", "kek_check", "active", "keys"})
        if d["format"] != KEYRING_FORMAT or d["version"] != KEYRING_VERSION:
            raise ManifestError("not a v1 appliance keyring")
        kek, keys = d["kek"], d["keys"]
        if not isinstance(kek, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in kek.items()):
            raise ManifestError("keyring kek must be an object of strings")
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise ManifestError(f"keyring keys must be a list of at most {MAX_KEYS}")
        return cls(
            kek=dict(kek),
            kek_check=_hex(d["kek_check"], "keyring kek_check", 16),
            active=_hex(d["active"], "keyring active", KEY_ID_BYTES),
            keys=tuple(WrappedKey.from_dict(k) for k in keys),
        )


KEK_SPEC_HELP = "file:PATH, systemd-creds:PATH or entry-point:pkg.module:factory"


def kek_spec_problem(spec: str) -> str | None:
    """Why ``spec`` is no KEK spec in the CLI's spelling (``None``: it is one); a bare path is refused."""
    provider, sep, rest = spec.partition(":")
    if not sep or provider not in PROVIDERS:
        return f"names no KEK provider (one of {', '.join(PROVIDERS)})"
    if not rest or len(rest) > 4096 or "\0" in rest:
        return "names no KEK location"
    if provider == "entry-point":
        module, sep, factory = rest.partition(":")
        if not (sep and factory.isidentifier() and all(part.isidentifier() for part in module.split("."))):
            return "is no entry point pkg.module:factory"
    return None


def kek_spec_path(spec: str) -> str | None:
    """The file a ``file:`` or ``systemd-creds:`` spec names (``None`` for an entry point)."""
    provider, _, rest = spec.partition(":")
    return rest if provider in ("file", "systemd-creds") else None
