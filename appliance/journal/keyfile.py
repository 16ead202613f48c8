"""The journal's MAC key: 32 random bytes that only the model service's user may read.

Owns: ``load_journal_key`` / ``create_journal_key``. The key file follows the device signing
key's rules (``appliance.signing.keys.check_private_key_stat``): no group or other bits, owned
by the process that uses it — here the model service (``appliance-serve``), which writes the
journal; ``appliance-persist`` stays the only reader of the device signing key. Creation is
atomic (temp file, fsync, link, directory fsync): a power cut leaves no key or a whole key.
Threat model: docs/design.md §7 ("journal key").
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from appliance.errors import JournalKeyError, KeyPermissionError
from appliance.signing.keys import check_private_key_stat

KEY_BYTES = 32


def load_journal_key(path: str | Path) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            try:
                check_private_key_stat(path, os.fstat(f.fileno()), os.geteuid())
            except KeyPermissionError as exc:
                raise JournalKeyError(f"journal key: {exc.problem}") from exc
            data = f.read(KEY_BYTES + 1)
    except OSError as exc:
        raise JournalKeyError(f"cannot read the journal key {path}: {exc.strerror or exc}") from exc
    if len(data) != KEY_BYTES:
        raise JournalKeyError(f"the journal key {path} is {len(data)} bytes, not {KEY_BYTES}: damaged")
    return data


def create_journal_key(path: str | Path) -> bool:
    """Create the key if absent (mode 0400, owned by this process's user); False if it existed."""
    path = Path(path)
    if path.exists():
        return False
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fchmod(fd, 0o400)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process created meanwhile
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise JournalKeyError(f"cannot create the journal key {path}: {exc.strerror or exc}") from exc
    return True
