"""``RecordingJournalFiles``: the journal's files in memory, logging every step a crash can split.

A fault-injection seam, not a file system: the fault suites (tests/faults/test_journal_crash.py)
record a run of the real writer on it and build crash states from the log with ``crash_image``,
in the crash model of ``appliance.storage.recording`` extended to appends: appended bytes are
durable only after ``sync`` of their file; a created or removed name only after ``sync_dir``;
an unsynced append may persist not at all, whole, as any prefix (a torn tail), or followed by
garbage (ALICE's append model).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from appliance.errors import JournalIOError


@dataclass(frozen=True)
class JOp:
    kind: str  # create | append | sync | sync_dir | truncate | remove
    name: str = ""
    data: bytes = b""
    size: int = 0


class RecordingJournalFiles:
    """In-memory ``JournalFiles`` with an operation log (``ops``); ``acked`` notes which ops a caller saw."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytearray] = {k: bytearray(v) for k, v in (files or {}).items()}
        self.aside: dict[str, bytes] = {}
        self.ops: list[JOp] = []

    def list(self) -> list[str]:
        return sorted(self.files)

    def create(self, name: str) -> None:
        if name in self.files:
            raise JournalIOError(f"{name} exists")
        self.files[name] = bytearray()
        self.ops.append(JOp("create", name))

    def append(self, name: str, data: bytes) -> None:
        self.files[name] += data
        self.ops.append(JOp("append", name, bytes(data)))

    def sync(self, name: str) -> None:
        self.ops.append(JOp("sync", name))

    def sync_dir(self) -> None:
        self.ops.append(JOp("sync_dir"))

    def read(self, name: str) -> bytes:
        if name not in self.files:
            raise JournalIOError(f"no segment {name}")
        return bytes(self.files[name])

    def truncate(self, name: str, size: int) -> None:
        del self.files[name][size:]
        self.ops.append(JOp("truncate", name, size=size))
        self.ops.append(JOp("sync", name))

    def set_aside(self, name: str, data: bytes, label: str) -> None:
        self.aside[f"{name}.{label}"] = bytes(data)

    def remove(self, name: str) -> None:
        self.files.pop(name, None)
        self.ops.append(JOp("remove", name))

    def close(self, name: str) -> None:
        return None

    def bound_retired(self, keep: int) -> None:
        for old in sorted(self.aside)[:-keep] if len(self.aside) > keep else []:
            del self.aside[old]


def crash_image(  # noqa: PLR0912 (one branch per operation kind and crash mode)
    ops: list[JOp], cut: int, rng: random.Random | None, mode: str = "durable", initial: dict[str, bytes] | None = None
) -> dict[str, bytes]:
    """The files after a power cut once ``ops[:cut]`` were issued.

    ``mode``: ``durable`` keeps only what a barrier covered; ``all`` keeps every issued op (a
    process kill: the page cache survives); ``torn`` keeps a random prefix of each file's unsynced
    appends; ``garbage`` that prefix plus random bytes; ``drop`` a random subset of unsynced
    name changes as well.
    """
    initial = initial or {}
    durable_names: set[str] = set(initial)  # the files before the log began are durable
    pending_names: dict[str, str] = {}  # name -> "create" | "remove" not yet covered by sync_dir
    content: dict[str, bytearray] = {k: bytearray(v) for k, v in initial.items()}
    synced_len: dict[str, int] = {k: len(v) for k, v in initial.items()}
    issued = ops[:cut]
    for op in issued:
        if op.kind == "create":
            content[op.name] = bytearray()
            synced_len[op.name] = 0
            pending_names[op.name] = "create"
        elif op.kind == "append":
            content.setdefault(op.name, bytearray()).extend(op.data)
        elif op.kind == "sync":
            synced_len[op.name] = len(content.get(op.name, b""))
        elif op.kind == "truncate":
            del content[op.name][op.size :]
            synced_len[op.name] = min(synced_len.get(op.name, 0), op.size)
        elif op.kind == "remove":
            pending_names[op.name] = "remove"
        elif op.kind == "sync_dir":
            for name, what in pending_names.items():
                if what == "create":
                    durable_names.add(name)
                else:
                    durable_names.discard(name)
            pending_names.clear()
    names = set(durable_names)
    for name, what in pending_names.items():
        keep = mode == "all" or (mode == "drop" and rng is not None and rng.random() < 0.5)
        if what == "create" and keep:
            names.add(name)
        if what == "remove" and keep:
            names.discard(name)
    out: dict[str, bytes] = {}
    for name in names:
        data = content.get(name, bytearray())
        durable = synced_len.get(name, 0)
        if mode == "all":
            out[name] = bytes(data)
            continue
        extra = bytes(data[durable:])
        if mode in ("torn", "garbage", "drop") and rng is not None and extra:
            extra = extra[: rng.randrange(len(extra) + 1)]
            if mode == "garbage":
                extra += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif mode == "durable":
            extra = b""
        out[name] = bytes(data[:durable]) + extra
    return out
