"""The anti-rollback generation floor behind an interface, with a file-backed default.

Owns: ``GenerationFloor`` (the interface), ``FileFloor`` (a JSON file written durably) and
``open_floor`` (picks the implementation from ``NodeConfig``). Does not own the rule for the
floor's value (``appliance.format.slotstate.floor_after_good``) or when it is raised (boot).

Contract of every implementation: ``read`` returns the floor or raises ``FloorUnreadableError``
(``FloorMissingError`` when the store is absent, ``FloorCorruptError`` when it holds no v1
floor: a deleted floor fails closed exactly like a damaged one, and boot rebuilds both from the
slot states; it never reads as 0); ``raise_to`` never lowers it and returns the value now stored.
``appliance node-init`` and the image write the initial floor file, so a missing one means someone
removed it.

On a Jetson the floor belongs in tamper-resistant storage (OP-TEE secure storage or an fTPM NV
counter): a file on the same disk can be rewound by anyone who can rewrite the disk. Such a
build implements ``GenerationFloor`` and names its factory in ``node.json`` as
``"floor_provider": "package.module:factory"`` (called with the ``NodeConfig``); it must fail
closed (raise) rather than report 0 when the secure store cannot be read.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError, StorageError
from appliance.format.canonical import canonical_bytes, get_int, require_keys, strict_loads
from appliance.format.manifest import MAX_GENERATION
from appliance.node.config import NodeConfig
from appliance.node.entrypoint import load_entry_point
from appliance.storage import LocalStorage, write_durable

FLOOR_FORMAT = "appliance.floor"
FLOOR_VERSION = 1


class FloorUnreadableError(Exception):
    """The floor store cannot be read or parsed."""


class FloorMissingError(FloorUnreadableError):
    """The floor store does not exist (deleted, or never provisioned): never read as floor 0."""


class FloorCorruptError(FloorUnreadableError):
    """The floor store exists and was read, but does not hold a v1 floor (damaged or rewritten)."""


class FloorNotAFileError(FloorCorruptError):
    """Something other than a regular file sits where the floor file belongs (a directory, a FIFO): boot's
    rebuild cannot replace it by rename, so it must be removed first. A symbolic link is merely damaged:
    it is never followed, and the rebuild's rename replaces the link itself."""


class GenerationFloor(Protocol):
    def read(self) -> int: ...

    def raise_to(self, value: int) -> int: ...


class FileFloor:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> int:
        if not os.path.lexists(self.path):  # the file or its directory is gone: never floor 0
            raise FloorMissingError(f"{self.path} does not exist")
        mode = os.lstat(self.path).st_mode
        if stat.S_ISLNK(mode):
            raise FloorCorruptError(f"{self.path} is a symbolic link (the floor file is never followed)")
        if not stat.S_ISREG(mode):
            raise FloorNotAFileError(f"{self.path} is {_kind(mode)}, not a file")
        try:
            data = LocalStorage(self.path.parent).read(self.path.name, 4096)
        except FileNotFoundError as exc:
            raise FloorMissingError(f"{self.path} does not exist") from exc
        except (ApplianceError, StorageError, OSError) as exc:
            raise FloorUnreadableError(f"cannot read {self.path}: {exc}") from exc
        try:
            obj = strict_loads(data, what=str(self.path), max_bytes=4096, max_depth=2)
            d = require_keys(obj, "floor", {"format", "version", "floor", "updated"})
            if d["format"] != FLOOR_FORMAT or d["version"] != FLOOR_VERSION:
                raise FloorCorruptError(f"{self.path} is not a v1 floor file")
            return get_int(d, "floor", "floor", 0, MAX_GENERATION)
        except ApplianceError as exc:
            raise FloorCorruptError(f"{self.path} is corrupt: {exc.problem}") from exc

    def raise_to(self, value: int) -> int:
        try:
            current, damaged = self.read(), False
        except FloorUnreadableError:
            current, damaged = 0, True  # rewritten below with the value the caller derived
        if value <= current and not damaged:
            return current
        value = max(value, current)
        body: dict[str, Any] = {
            "format": FLOOR_FORMAT,
            "version": FLOOR_VERSION,
            "floor": value,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = os.lstat(self.path).st_mode if os.path.lexists(self.path) else None
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):  # a link is replaced by the rename
            raise StorageError(
                f"the anti-rollback floor {self.path} is {_kind(mode)}, not a file: the floor cannot be recorded",
                remedy=f"remove {self.path} (boot never deletes it); the next boot rebuilds the floor from the slot "
                "states and writes it",
            )
        write_durable(LocalStorage(self.path.parent), self.path.name, canonical_bytes(body) + b"\n")
        return value


def _kind(mode: int) -> str:
    return "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"


def open_floor(config: NodeConfig) -> GenerationFloor:
    if not config.floor_provider:
        return FileFloor(config.floor_file)
    floor: GenerationFloor = load_entry_point(config.floor_provider, "floor_provider")(config)
    return floor
