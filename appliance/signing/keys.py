"""Signing key pairs (Ed25519, ECDSA P-256) and their files.

Owns: the key types (``KEY_TYPES``), key generation, key ids, PEM (de)serialisation, and
reading/writing key files. Does not own: which keys are trusted (``trust``).

A key id is the lowercase hex SHA-256 of the raw public key (Ed25519: 32 bytes; ECDSA P-256:
the 65-byte uncompressed X9.62 point), so it is derived, never chosen: a signature's ``keyid``
can only select a key, not impersonate one. Key types: ``ed25519`` (the default) and
``ecdsa-p256`` (ECDSA over SHA-256, DER signatures) — the key type OpenSSF model-signing
verifies, so one key can sign both our checkpoints and a restored directory's ``model.sig``.
A new type is one more entry in ``_TYPES``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import KeyFileError, KeyPermissionError
from appliance.format.shown import a_or_an

KEY_FILE_MAX_BYTES = 64 * 1024
PRIVATE_KEY_FORBIDDEN_BITS = 0o077  # a private key file is readable by its owner only (0400 or 0600)


ED25519, ECDSA_P256 = "ed25519", "ecdsa-p256"
PublicObject = Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateObject = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def keyid_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class _KeyType:
    """How one key type encodes its raw public key, verifies, signs and generates."""

    name: str
    raw_size: int

    def public_object(self, raw: bytes) -> PublicObject:
        if self.name == ED25519:
            return Ed25519PublicKey.from_public_bytes(raw)
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)

    def verify(self, raw: bytes, signature: bytes, data: bytes) -> bool:
        key = self.public_object(raw)
        try:
            if isinstance(key, Ed25519PublicKey):
                key.verify(signature, data)
            else:
                key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


_TYPES = {ED25519: _KeyType(ED25519, 32), ECDSA_P256: _KeyType(ECDSA_P256, 65)}
KEY_TYPES = tuple(_TYPES)
_PRIVATE_MARK, _PUBLIC_MARK = b"PRIVATE KEY-----", b"-----BEGIN PUBLIC KEY-----"
PRIVATE_KEY_REMEDY = (
    "pass the private key file written by `appliance keygen KEYFILE` (PEM PKCS#8, Ed25519 or ECDSA P-256; "
    "not KEYFILE.pub); check the path"
)
PUBLIC_KEY_REMEDY = (
    "pass the public key file KEYFILE.pub written by `appliance keygen KEYFILE` (PEM, Ed25519 or ECDSA P-256); "
    "check the path"
)


def key_type_of(key: PublicObject | PrivateObject, source: str) -> str:
    """The key type of a ``cryptography`` key object, or ``KeyFileError`` naming what it is."""
    if isinstance(key, (Ed25519PublicKey, Ed25519PrivateKey)):
        return ED25519
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and key.curve.name == "secp256r1":
        return ECDSA_P256
    kind = (
        key.curve.name
        if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey))
        else type(key).__name__
    )
    raise KeyFileError(
        f"{source} is {a_or_an(kind)} key; signing keys are Ed25519 or ECDSA P-256 ({', '.join(KEY_TYPES)})"
    )


def _raw_public(key: PublicObject) -> bytes:
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes_raw()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # Ed25519: 32 bytes; ECDSA P-256: 65-byte uncompressed point
    type: str = ED25519

    def __post_init__(self) -> None:
        kind = _TYPES.get(self.type)
        if kind is None:
            raise KeyFileError(f"key type {self.type!r:.40} is not supported ({', '.join(KEY_TYPES)})")
        if len(self.raw) != kind.raw_size:
            raise KeyFileError(f"an {self.type} public key has {kind.raw_size} bytes, got {len(self.raw)}")
        if self.type != ED25519:
            try:
                kind.public_object(self.raw)
            except ValueError as exc:
                raise KeyFileError(f"not a valid {self.type} public key: {exc}") from exc

    @property
    def keyid(self) -> str:
        return keyid_of(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        return _TYPES[self.type].verify(self.raw, signature, data)

    def to_pem(self) -> bytes:
        key = _TYPES[self.type].public_object(self.raw)
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def from_pem(cls, data: bytes, source: str = "public key") -> PublicKey:
        if _PRIVATE_MARK in data:
            raise KeyFileError(
                f"{source} is a private key; a public key is needed here (to trust or verify)",
                remedy=f"pass the public key file {source}.pub (`appliance keygen` writes it beside the private key); "
                "never hand out the private key",
            )
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source} is not a PEM public key: {exc}", remedy=PUBLIC_KEY_REMEDY) from exc
        if not isinstance(key, (Ed25519PublicKey, ec.EllipticCurvePublicKey)):
            raise KeyFileError(
                f"{source} is {a_or_an(type(key).__name__)}; signing keys are {', '.join(KEY_TYPES)}",
                remedy=PUBLIC_KEY_REMEDY,
            )
        return cls(_raw_public(key), key_type_of(key, source))

    @classmethod
    def load(cls, path: str | Path) -> PublicKey:
        return cls.from_pem(_read_key_file(Path(path)), str(path))


class SigningKey:
    """A private signing key (``KEY_TYPES``). Keep release keys off the device (docs/design.md §7)."""

    def __init__(self, key: PrivateObject) -> None:
        self._key = key
        self.public = PublicKey(_raw_public(key.public_key()), key_type_of(key, "private key"))

    @classmethod
    def generate(cls, key_type: str = ED25519) -> SigningKey:
        if key_type == ED25519:
            return cls(Ed25519PrivateKey.generate())
        if key_type == ECDSA_P256:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        raise KeyFileError(f"key type {key_type!r:.40} is not supported ({', '.join(KEY_TYPES)})")

    @property
    def keyid(self) -> str:
        return self.public.keyid

    @property
    def type(self) -> str:
        return self.public.type

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, Ed25519PrivateKey):
            return self._key.sign(data)
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: str | Path) -> Path:
        """Write KEYFILE (mode 0600) and KEYFILE.pub; refuses to overwrite either."""
        path = Path(path)
        pub_path = path.with_name(path.name + ".pub")
        for target, data, mode in (
            (path, self.private_pem(), 0o600),
            (pub_path, self.public.to_pem(), 0o644),
        ):
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            except FileExistsError as exc:
                raise KeyFileError(f"{target} already exists", remedy="choose a new key file name") from exc
            except OSError as exc:
                raise KeyFileError(f"cannot create {target}: {exc.strerror}") from exc
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        return pub_path

    @classmethod
    def from_pem(cls, data: bytes, source: str = "private key") -> SigningKey:
        if _only_public(data):
            raise KeyFileError(
                f"{source} is a public key; signing needs the private key",
                remedy=f"pass the private key file ({source.removesuffix('.pub')} if `appliance keygen` wrote "
                f"{source}); a public key only verifies",
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(
                f"{source} is not an unencrypted PEM private key: {exc}", remedy=PRIVATE_KEY_REMEDY
            ) from exc
        if not isinstance(key, (Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
            raise KeyFileError(
                f"{source} is {a_or_an(type(key).__name__)}; signing keys are {', '.join(KEY_TYPES)}",
                remedy=PRIVATE_KEY_REMEDY,
            )
        key_type_of(key, source)
        return cls(key)

    @classmethod
    def load(cls, path: str | Path, *, owner: int | None = None) -> SigningKey:
        """Read a private key file; refuses one that others could read or that another user owns.

        Raises ``KeyFileError`` (unreadable, malformed) or ``KeyPermissionError`` (group/world
        bits set, or owner != this process's effective uid; the check is on the opened file).
        ``owner``: root may also load a key file owned by this uid — the user the key was provisioned
        for (first boot signs the re-sealed factory checkpoint with the persist user's device key).
        """
        return cls.from_pem(_read_key_file(Path(path), private=True, owner=owner), str(path))


def check_private_key_stat(path: Path, st: os.stat_result, euid: int, owner: int | None = None) -> None:
    """Refuse a private key file whose mode or owner lets anyone but this process read it (``owner``: when
    this process is root, the one other uid whose key it may use, the key's provisioned user)."""
    if st.st_mode & PRIVATE_KEY_FORBIDDEN_BITS:
        raise KeyPermissionError(
            f"private key {path} has mode {st.st_mode & 0o777:04o}: group or others may read it",
            remedy=f"chmod 0400 {path} (and treat the key as leaked if others could read it)",
        )
    if st.st_uid != euid and not (euid == 0 and owner is not None and st.st_uid == owner):
        raise KeyPermissionError(
            f"private key {path} is owned by uid {st.st_uid}, this process runs as uid {euid}",
            remedy=f"chown the key to the user that signs (production: appliance-persist), or run as uid {st.st_uid}",
        )


def _only_public(data: bytes) -> bool:
    return _PUBLIC_MARK in data and _PRIVATE_MARK not in data


def _read_key_file(path: Path, *, private: bool = False, owner: int | None = None) -> bytes:
    """The key file's bytes. A private key's mode and owner are checked on the opened file; a
    public key given where a private one is needed is named as such (it holds no secret)."""
    remedy = PRIVATE_KEY_REMEDY if private else PUBLIC_KEY_REMEDY
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_MAX_BYTES + 1)
            if private and not _only_public(data):
                check_private_key_stat(path, os.fstat(f.fileno()), os.geteuid(), owner)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}", remedy=remedy) from exc
    if len(data) > KEY_FILE_MAX_BYTES:
        raise KeyFileError(f"{path} is too large to be a key file", remedy=remedy)
    return data
