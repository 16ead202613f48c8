"""Technician credentials of one device: argon2id hashes in a 0600 file, and the one-time setup code.

Owns: ``Technicians`` (``STATE/technicians.json``: name -> argon2id hash, created; written
atomically, mode 0600; plus the read-only file first boot provisions) and ``SetupCode``
(``STATE/setup-code``: a random code that lets the first technician set a password, shown on
the node's local console and usable once).
Does not own throttling (``appliance.format.console``) or HTTP.

There is no default password (ETSI EN 303 645 5.1-1): a device with no technicians accepts
no login at all until one is provisioned (``appliance console passwd NAME`` over SSH or
serial) or set through the setup code. Hashes use argon2-cffi's RFC 9106 "low memory"
profile (argon2id, t=3, m=64 MiB, p=4): fits a Jetson, costs an attacker ~0.1 s per guess.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY

from appliance.errors import ConsoleAccessError, UsageError

NAME_RE = re.compile(r"^[a-z_][a-z0-9._-]{0,31}$")  # accepts first boot's [a-z_][a-z0-9_-]*
MIN_PASSWORD = 12  # ASVS 2.1.1
MAX_PASSWORD = 128  # ASVS 2.1.2
FILE_FORMAT = "appliance.technicians"
_HASHER = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)
# A hash of a random secret: verifying an unknown name costs the same as a known one (no user enumeration).
_DUMMY = _HASHER.hash(secrets.token_hex(16))


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"technician name {name!r:.40} must be 1-32 of a-z 0-9 . _ - starting with a letter or _")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsageError(f"a technician password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def _write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


class Technicians:
    """The technicians of this device: set on the node (``STATE/technicians.json``) or provisioned.

    Two sources, both ``{"format": "appliance.technicians", "version": 1, "technicians": ...}``:
    the console's own file (a mapping name -> {hash, created}; written by ``appliance console
    passwd`` and the setup page) and, read-only, the file first boot writes from the
    provisioning file (``/etc/appliance/technicians.json``: a list of {name, password_hash};
    docs/design.md §12). A name in the console's file overrides the provisioned one.
    """

    def __init__(self, state_dir: str | Path, provisioned: str | Path | None = None) -> None:
        self.path = Path(state_dir) / "technicians.json"
        self.provisioned = Path(provisioned) if provisioned else None

    @staticmethod
    def _read(path: Path) -> dict[str, str]:
        """name -> PHC hash string from either form; a missing file is empty."""
        try:
            data = json.loads(path.read_bytes()[:1_000_000])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConsoleAccessError(f"technician file {path} is unreadable: {exc}") from exc
        users = data.get("technicians") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise ConsoleAccessError(f"technician file {path} is not an appliance technician file")
        if isinstance(users, dict):
            pairs = [(k, v.get("hash") if isinstance(v, dict) else None) for k, v in users.items()]
        elif isinstance(users, list):
            pairs = [(u.get("name"), u.get("password_hash")) for u in users if isinstance(u, dict)]
        else:
            raise ConsoleAccessError(f"technician file {path} has no technician list")
        return {k: v for k, v in pairs if isinstance(k, str) and isinstance(v, str) and NAME_RE.fullmatch(k)}

    def _all(self) -> dict[str, str]:
        provisioned = self._read(self.provisioned) if self.provisioned else {}
        return provisioned | self._read(self.path)

    def names(self) -> list[str]:
        return sorted(self._all())

    def empty(self) -> bool:
        return not self._all()

    def set(self, name: str, password: str) -> None:
        try:
            current = json.loads(self.path.read_bytes()[:1_000_000]).get("technicians", {})
        except FileNotFoundError:
            current = {}
        except (OSError, ValueError, AttributeError) as exc:
            raise ConsoleAccessError(f"technician file {self.path} is unreadable: {exc}") from exc
        users = dict(current) if isinstance(current, dict) else {}
        users[check_name(name)] = {
            "hash": _HASHER.hash(check_password(password)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        body = {"format": FILE_FORMAT, "version": 1, "technicians": users}
        _write_private(self.path, json.dumps(body, sort_keys=True, indent=1).encode() + b"\n")

    def verify(self, name: str, password: str) -> bool:
        """True only for a known name with its password; constant work for unknown names."""
        stored = self._all().get(name) if NAME_RE.fullmatch(name) else None
        try:
            return _HASHER.verify(stored or _DUMMY, password[:MAX_PASSWORD]) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


class SetupCode:
    """One-time code for the first technician; exists only while no technician is provisioned.

    The code itself is written 0600 for the node's local console (``appliance console
    setup-code`` on the serial or HDMI console as root); the console process keeps only its
    argon2 hash in memory and deletes the file once it has been used.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "setup-code"
        self._hash: str | None = None

    def issue(self) -> str:
        code = "-".join(secrets.token_hex(2).upper() for _ in range(4))  # 64 bits, readable off a screen
        _write_private(self.path, code.encode() + b"\n")
        self._hash = _HASHER.hash(code)
        return code

    def load(self) -> bool:
        """Adopt a code written earlier (a console restart); False if there is none."""
        try:
            code = self.path.read_text().strip()
        except OSError:
            return False
        self._hash = _HASHER.hash(code) if code else None
        return self._hash is not None

    @property
    def active(self) -> bool:
        return self._hash is not None

    def redeem(self, code: str) -> bool:
        """True once for the right code; the code is then gone (file deleted, hash forgotten)."""
        if self._hash is None:
            return False
        ok: bool
        try:
            ok = _HASHER.verify(self._hash, code.strip().upper()[:64])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if ok:
            self._hash = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        return ok


def read_setup_code(state_dir: str | Path) -> str | None:
    path = Path(state_dir) / "setup-code"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def constant_eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
