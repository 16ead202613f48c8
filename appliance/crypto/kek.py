"""Key-encryption-key providers: where the 32-byte KEK that wraps a store's data keys comes from.

Owns: ``KekSource`` (the interface), ``FileKek`` (a file of mode 0400, development and nodes
without secure storage), ``SystemdCredsKek`` (a ``systemd-creds`` credential sealed to the node's
TPM2, ``--with-key=tpm2``: the node's services are unprivileged and can never read systemd's
root-only host key ``/var/lib/systemd/credential.secret``, so a host-key credential is for root
use only; systemd >= 250, so never on JetPack 6's systemd 249), ``EntryPointKek`` (``pkg.mod:factory`` returning a
``KekSource``: the OP-TEE/EKB provider on a Jetson, hil) and ``kek_source`` (descriptor ->
source). The keyring names its KEK by the descriptor (``appliance.format.crypto.Keyring``).

Every failure to obtain a KEK raises ``KeyUnavailableError`` (55): a node fault.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Protocol

from appliance.errors import KeyUnavailableError, UsageError
from appliance.format.crypto import KEY_BYTES

CREDENTIAL_NAME = "appliance-store-kek"
SYSTEMD_CREDS_TIMEOUT_S = 30


class KekSource(Protocol):
    def kek(self) -> bytes:
        """The 32-byte KEK; ``KeyUnavailableError`` when it cannot be obtained."""
        ...

    def descriptor(self) -> dict[str, str]:
        """How the keyring names this source (JSON strings only)."""
        ...


class FileKek:
    """A KEK in a regular file of mode 0400 (0440 for the ``appliance`` group); never readable by others."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def descriptor(self) -> dict[str, str]:
        return {"provider": "file", "path": str(self.path)}

    @classmethod
    def create(cls, path: str | Path, group: int | None = None) -> FileKek:
        """A new random KEK at ``path`` (refused if the file exists: a KEK is never overwritten).

        Atomic: written to a temp file of mode 0400 (0440 and group ``group`` when given, as root),
        synced, then hard-linked into place (fails if the name exists) and the directory synced, so a
        cut leaves no KEK or a whole one.
        """
        target = Path(path)
        if target.exists() or target.is_symlink():
            raise UsageError(f"{target} exists; a key-encryption key is never overwritten")
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
            try:
                if group is not None:
                    os.fchown(fd, -1, group)
                    os.fchmod(fd, 0o440)
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, target)
        except FileExistsError:
            raise UsageError(f"{target} exists; a key-encryption key is never overwritten") from None
        except OSError as exc:
            raise UsageError(f"cannot create {target}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        _fsync_dir(target.parent)
        return cls(target)

    def destroy(self) -> bool:
        """Overwrite the KEK in place with random bytes, sync, unlink (on flash only best effort: design §14.6)."""
        try:
            size = self.path.stat().st_size
            self.path.chmod(0o600)
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.write(fd, secrets.token_bytes(max(size, KEY_BYTES)))
                os.fsync(fd)
            finally:
                os.close(fd)
            self.path.unlink()
        except OSError:
            return False
        return True

    def kek(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyUnavailableError(f"KEK file {self.path} cannot be opened: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o037:
                raise KeyUnavailableError(
                    f"KEK file {self.path} has mode {oct(st.st_mode & 0o777)}: it must be a regular file "
                    "readable by its owner (and at most the appliance group) only",
                    remedy=f"chmod 0400 {self.path} (the key may have leaked: rotate it, `appliance key rotate-kek`)",
                )
            data = os.read(fd, KEY_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) != KEY_BYTES:
            raise KeyUnavailableError(f"KEK file {self.path} holds {len(data)} bytes, not {KEY_BYTES}: damaged")
        return data


class SystemdCredsKek:
    """A KEK kept as an encrypted ``systemd-creds`` credential file (decrypted per use, never stored plain)."""

    def __init__(self, path: str | Path, name: str = CREDENTIAL_NAME) -> None:
        self.path = Path(path)
        self.name = name

    def descriptor(self) -> dict[str, str]:
        return {"provider": "systemd-creds", "path": str(self.path), "name": self.name}

    @staticmethod
    def available() -> bool:
        return shutil.which("systemd-creds") is not None

    @classmethod
    def create(
        cls, path: str | Path, name: str = CREDENTIAL_NAME, with_key: str = "tpm2", group: int | None = None
    ) -> SystemdCredsKek:
        """Seal a new random KEK with ``systemd-creds encrypt --with-key=WITH_KEY`` at ``path``.

        ``tpm2`` (the default): sealed to this node's TPM2 (systemd's default PCR 7 policy), so any of
        the node's users that may open ``/dev/tpmrm0`` (group ``tss``, docs/image.md §4) unseals it and
        nobody can off this TPM. Refused (``KeyUnavailableError``) when systemd finds no usable TPM2:
        ``host`` or ``auto`` would need systemd's root-only host key, which the unprivileged
        services cannot read. ``group``: the credential file (ciphertext) becomes 0440 for that group.
        """
        target = Path(path)
        if target.exists():
            raise UsageError(f"{target} exists; a key-encryption key is never overwritten")
        if with_key == "tpm2" and shutil.which("systemd-creds") is not None and not _has_tpm2():
            raise KeyUnavailableError(
                "systemd-creds finds no usable TPM2 on this node (`systemd-creds has-tpm2`)",
                remedy="use encrypt_kek file:PATH (or an OP-TEE entry point) on a node without a TPM2; a host-key "
                "credential is readable by root only and the node's services are not root",
            )
        _run(["encrypt", f"--name={name}", f"--with-key={with_key}", "-", str(target)], secrets.token_bytes(KEY_BYTES))
        if group is not None:
            os.chown(target, -1, group)
            target.chmod(0o440)
        _fsync_dir(target.parent)
        return cls(target, name)

    def kek(self) -> bytes:
        if not self.path.is_file():
            raise KeyUnavailableError(f"systemd credential {self.path} is missing")
        data = _run(["decrypt", f"--name={self.name}", str(self.path), "-"], b"")
        if len(data) != KEY_BYTES:
            raise KeyUnavailableError(f"systemd credential {self.path} decrypts to {len(data)} bytes, not {KEY_BYTES}")
        return data


def _has_tpm2() -> bool:
    """Whether systemd-creds can seal to a TPM2 here: the kernel driver (``+driver``: ``/dev/tpmrm0``) and the
    tss2 libraries (``+system``). Firmware support (an EFI TPM event log) is not needed to seal, so
    ``has-tpm2``'s "partial" (exit 11 on a non-EFI machine with a TPM, as the VM tier's SeaBIOS) is enough."""
    exe = shutil.which("systemd-creds")
    if exe is None:
        return False
    try:
        done = subprocess.run(  # noqa: S603 - fixed executable and arguments
            [exe, "has-tpm2"], capture_output=True, text=True, timeout=SYSTEMD_CREDS_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    flags = set(done.stdout.split())
    return {"+driver", "+system"} <= flags


def _run(args: list[str], stdin: bytes) -> bytes:
    exe = shutil.which("systemd-creds")
    if exe is None:
        raise KeyUnavailableError(
            "systemd-creds is not installed (systemd >= 250)",
            remedy="use the file or OP-TEE provider on this node (JetPack 6 ships systemd 249)",
        )
    try:
        done = subprocess.run(  # noqa: S603 - fixed executable, arguments built here
            [exe, *args], input=stdin, capture_output=True, timeout=SYSTEMD_CREDS_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyUnavailableError(f"systemd-creds {args[0]} failed: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise KeyUnavailableError(f"systemd-creds {args[0]} failed ({done.returncode}): {message[0]}")
    return done.stdout


class EntryPointKek:
    """``pkg.module:factory`` returning a ``KekSource`` (the OP-TEE/EKB provider on a Jetson: hil)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def descriptor(self) -> dict[str, str]:
        return {"provider": "entry-point", "name": self.name}

    def kek(self) -> bytes:
        module, _, attr = self.name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
            source: KekSource = factory()
            return source.kek()
        except KeyUnavailableError:
            raise
        except Exception as exc:
            raise KeyUnavailableError(f"KEK provider {self.name} failed: {type(exc).__name__}: {exc}") from exc


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_missing(source: KekSource, group: int | None = None) -> KekSource:
    """``source``, first created when it is a file or credential that does not exist yet (``init --encrypt``).

    ``group``: a new file KEK or credential is made 0440 for that group (first boot, as root: the node's
    users read it).
    """
    if isinstance(source, FileKek) and not source.path.exists():
        return FileKek.create(source.path, group)
    if isinstance(source, SystemdCredsKek) and not source.path.exists():
        return SystemdCredsKek.create(source.path, group=group)
    return source


def kek_source(descriptor: dict[str, str]) -> KekSource:
    provider = descriptor.get("provider")
    if provider == "file" and "path" in descriptor:
        return FileKek(descriptor["path"])
    if provider == "systemd-creds" and "path" in descriptor:
        return SystemdCredsKek(descriptor["path"], descriptor.get("name", CREDENTIAL_NAME))
    if provider == "entry-point" and ":" in descriptor.get("name", ""):
        return EntryPointKek(descriptor["name"])
    raise KeyUnavailableError(f"the keyring names an unknown KEK provider {descriptor!r:.120}")


def parse_kek_option(value: str) -> KekSource:
    """CLI spelling: ``file:PATH``, ``systemd-creds:PATH``, ``entry-point:pkg.mod:factory`` (or a bare PATH)."""
    provider, sep, rest = value.partition(":")
    if sep and provider == "file":
        return FileKek(rest)
    if sep and provider == "systemd-creds":
        return SystemdCredsKek(rest)
    if sep and provider == "entry-point":
        return EntryPointKek(rest)
    return FileKek(value)
