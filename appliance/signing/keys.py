"""Ed25519 key pairs and their files.

Owns: key generation, key ids, PEM (de)serialisation, and reading/writing key files.
Does not own: which keys are trusted (``trust``).

A key id is the lowercase hex SHA-256 of the 32-byte raw public key, so it is derived, never
chosen: a signature's ``keyid`` can only select a key, not impersonate one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import KeyFileError, KeyPermissionError

KEY_FILE_MAX_BYTES = 64 * 1024
PRIVATE_KEY_FORBIDDEN_BITS = 0o077  # a private key file is readable by its owner only (0400 or 0600)


def keyid_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # 32 bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFileError(f"an Ed25519 public key has 32 bytes, got {len(self.raw)}")

    @property
    def keyid(self) -> str:
        return keyid_of(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def from_pem(cls, data: bytes, source: str = "public key") -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source} is not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source} is a {type(key).__name__}, not an Ed25519 key")
        return cls(key.public_bytes_raw())

    @classmethod
    def load(cls, path: str | Path) -> PublicKey:
        return cls.from_pem(_read_key_file(Path(path)), str(path))


class SigningKey:
    """An Ed25519 private key. Keep it off the device in production (docs/design.md §7)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = PublicKey(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

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
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source} is a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """Read a private key file; refuses one that others could read or that another user owns.

        Raises ``KeyFileError`` (unreadable, malformed) or ``KeyPermissionError`` (group/world
        bits set, or owner != this process's effective uid; the check is on the opened file).
        """
        return cls.from_pem(_read_key_file(Path(path), private=True), str(path))


def check_private_key_stat(path: Path, st: os.stat_result, euid: int) -> None:
    """Refuse a private key file whose mode or owner lets anyone but this process read it."""
    if st.st_mode & PRIVATE_KEY_FORBIDDEN_BITS:
        raise KeyPermissionError(
            f"private key {path} has mode {st.st_mode & 0o777:04o}: group or others may read it",
            remedy=f"chmod 0400 {path} (and treat the key as leaked if others could read it)",
        )
    if st.st_uid != euid:
        raise KeyPermissionError(
            f"private key {path} is owned by uid {st.st_uid}, this process runs as uid {euid}",
            remedy=f"chown the key to the user that signs (production: appliance-persist), or run as uid {st.st_uid}",
        )


def _read_key_file(path: Path, *, private: bool = False) -> bytes:
    try:
        with open(path, "rb") as f:
            if private:
                check_private_key_stat(path, os.fstat(f.fileno()), os.geteuid())
            data = f.read(KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(data) > KEY_FILE_MAX_BYTES:
        raise KeyFileError(f"{path} is too large to be a key file")
    return data
