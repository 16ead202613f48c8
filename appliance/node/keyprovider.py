"""The device's private keys behind one interface, with a file-backed default.

Owns: ``KeyProvider`` (the interface every key store implements), ``FileKeyProvider`` (key files
of mode 0400, the default) and ``open_key_provider`` (picks the implementation from ``NodeConfig``).
Does not own what a key is used for (signing persisted deltas: ``appliance.persist``; registering
it: ``appliance.provision``) or the trust decision about it (``appliance.signing``).

Keys are named (``"device"`` is the device signing key). Two kinds:

* **signing keys** (Ed25519): ``create_signing_key(name) -> PublicKey``, ``signing_key(name)``,
  ``public_key(name)``;
* **secrets** (random bytes; data-encryption keys for encryption at rest reuse this interface):
  ``create_secret(name, size) -> None``, ``secret(name) -> bytes``.

Contract of every implementation:

* ``create_*`` is idempotent: an existing key is kept and never overwritten (a second call
  returns the same public key); creation is atomic: a power cut leaves no key or a whole key,
  never a truncated one;
* reads fail closed with ``KeyProviderError`` (exit 81), never with a fresh key;
* ``describe()`` names the provider and where keys live, for ``/etc/appliance/device.json``.

On a Jetson, a provider backed by OP-TEE secure storage or an fTPM keeps the private key out of the
file system (docs/image.md §4.2, hil); it is named in ``node.json`` as ``"key_provider":
"package.module:factory"`` (called with the ``NodeConfig``), like ``floor_provider``.
"""

from __future__ import annotations

import contextlib
import os
import secrets as random_source
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError, KeyProviderError
from appliance.node.config import NodeConfig
from appliance.node.entrypoint import load_entry_point
from appliance.signing import PublicKey, SigningKey

DEVICE_KEY = "device"
KEY_MODE = 0o400
SECRET_MAX_BYTES = 4096


class KeyProvider(Protocol):
    def create_signing_key(self, name: str) -> PublicKey: ...

    def signing_key(self, name: str) -> SigningKey: ...

    def public_key(self, name: str) -> PublicKey: ...

    def create_secret(self, name: str, size: int) -> None: ...

    def secret(self, name: str) -> bytes: ...

    def describe(self) -> dict[str, Any]: ...


class FileKeyProvider:
    """Keys as files of mode 0400 owned by ``owner`` (uid, gid) when given (default: the caller).

    ``files`` maps key names to paths (``{"device": node.json's signing_key}``); other names live in
    ``directory`` as ``<name>.key`` / ``<name>.secret``. A signing key's public half is written next
    to it as ``<file>.pub`` (0444).
    """

    def __init__(
        self, directory: str | Path, files: Mapping[str, str | Path] | None = None, owner: tuple[int, int] | None = None
    ) -> None:
        self.directory = Path(directory)
        self.files = {k: Path(v) for k, v in (files or {}).items()}
        self.owner = owner

    def path(self, name: str, suffix: str = ".key") -> Path:
        if not name.isidentifier():
            raise KeyProviderError(f"key name {name!r:.40} is not an identifier")
        return self.files.get(name, self.directory / f"{name}{suffix}")

    # --- signing keys -------------------------------------------------------------------------

    def create_signing_key(self, name: str) -> PublicKey:
        path = self.path(name)
        if not path.exists():
            key = SigningKey.generate()
            self._create(path, key.private_pem())
            public = key.public  # not re-read: the file may now belong to its signing user (owner)
        else:
            public = self.public_key(name)
        pub = path.with_name(path.name + ".pub")
        if not pub.exists() or pub.read_bytes() != public.to_pem():
            pub.unlink(missing_ok=True)
            self._create(pub, public.to_pem(), mode=0o444, chown=False)
        return public

    def signing_key(self, name: str) -> SigningKey:
        path = self.path(name)
        try:  # root (first boot) may use the key it provisioned for its owner
            return SigningKey.load(path, owner=self.owner[0] if self.owner else None)
        except ApplianceError as exc:
            raise KeyProviderError(f"device key {name!r} cannot be read from {path}: {exc.problem}") from exc

    def public_key(self, name: str) -> PublicKey:
        """From the private key when this process may load it (it owns it), else from ``<file>.pub``."""
        path = self.path(name)
        if self.owner is not None and os.geteuid() != self.owner[0]:
            pub = path.with_name(path.name + ".pub")
            try:
                return PublicKey.load(pub)
            except ApplianceError as exc:
                raise KeyProviderError(f"public key of {name!r} cannot be read from {pub}: {exc.problem}") from exc
        return self.signing_key(name).public

    # --- secrets --------------------------------------------------------------------------------

    def create_secret(self, name: str, size: int) -> None:
        if not 16 <= size <= SECRET_MAX_BYTES:
            raise KeyProviderError(f"a secret is 16..{SECRET_MAX_BYTES} bytes, not {size}")
        path = self.path(name, ".secret")
        if not path.exists():
            self._create(path, random_source.token_bytes(size))

    def secret(self, name: str) -> bytes:
        path = self.path(name, ".secret")
        try:
            with open(path, "rb") as f:
                data = f.read(SECRET_MAX_BYTES + 1)
        except OSError as exc:
            raise KeyProviderError(f"secret {name!r} cannot be read from {path}: {exc.strerror}") from exc
        if not 16 <= len(data) <= SECRET_MAX_BYTES:
            raise KeyProviderError(f"secret {name!r} in {path} is {len(data)} bytes: damaged")
        return data

    def describe(self) -> dict[str, Any]:
        return {"provider": "file", "directory": str(self.directory), "mode": oct(KEY_MODE)}

    # --- atomic creation ------------------------------------------------------------------------

    def _create(self, path: Path, data: bytes, mode: int = KEY_MODE, chown: bool = True) -> None:
        """Write ``data`` to a temp file of ``mode``, fsync, rename into place, fsync the directory."""
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
                os.fchmod(fd, mode)
                if chown and self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)  # never replaces a key another process created meanwhile
            tmp.unlink()
            dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise KeyProviderError(f"cannot create {path}: {exc.strerror or exc}") from exc


def service_owner(user: str = "appliance-persist") -> tuple[int, int] | None:
    """(uid, gid) of the persistence watchdog's user, the only reader of the device key; None if absent."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def open_key_provider(config: NodeConfig) -> KeyProvider:
    """The provider ``node.json`` names (``key_provider``), else key files next to ``signing_key``."""
    if config.key_provider:
        provider: KeyProvider = load_entry_point(config.key_provider, "key_provider")(config)
        return provider
    key = Path(config.signing_key)
    owner = service_owner() if os.geteuid() == 0 else None
    return FileKeyProvider(key.parent, {DEVICE_KEY: key}, owner=owner)
