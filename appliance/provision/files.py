"""Small files of first boot: written durably with an owner and a mode, and shredded.

Owns: ``write_file`` (temp file of the final mode -> fsync -> rename -> fsync directory, so a cut
leaves the old file or the new one), ``read_json`` (bounded, strict) and ``shred`` (overwrite
with random bytes, fsync, unlink, fsync directory). Does not own what the files mean.

``shred`` on flash storage: the FTL may keep the old blocks, so an overwrite is a best effort
against a later file-system reader, not against a chip-off attacker; the provisioning file carries
password *hashes* only for that reason (docs/image.md §4.3).
"""

from __future__ import annotations

import contextlib
import grp
import os
import secrets
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, ProvisioningError
from appliance.format.canonical import canonical_bytes, strict_loads

SHRED_CHUNK = 1 << 16


def group_id(name: str = "appliance") -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mode: int = 0o644, gid: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            if gid is not None and os.geteuid() == 0:
                os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ProvisioningError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_json(path: Path, value: Any, mode: int = 0o644, gid: int | None = None) -> None:
    write_file(path, canonical_bytes(value) + b"\n", mode, gid)


def read_json(path: Path, max_bytes: int = 1 << 20, what: str | None = None) -> Any:
    """The parsed file, or ``None`` when it does not exist; damaged -> ``ProvisioningError``."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return strict_loads(data, what=what or str(path), max_bytes=max_bytes, max_depth=16)
    except ApplianceError as exc:
        raise ProvisioningError(f"{path} is damaged: {exc.problem}") from exc


def shred(path: Path) -> bool:
    """Overwrite ``path`` in place with random bytes, fsync, unlink, fsync its directory; False if absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ProvisioningError(f"cannot shred {path}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        done = 0
        while done < size:
            n = min(SHRED_CHUNK, size - done)
            os.pwrite(fd, secrets.token_bytes(n), done)
            done += n
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    _fsync_dir(path.parent)
    return True
