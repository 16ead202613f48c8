"""The replicator's durable queue: what is replicated, what is pending, what failed and when to retry.

Owns: ``ReplicationState`` (``STATE_DIR/replication.json``, written with the durable-write helper,
so a power cut leaves the previous or the new state, never a torn one) and ``SeenHeads``
(``STATE_DIR/heads-seen.json``: the highest head sequence this node accepted or published per
prefix, the memory that refuses a replayed old head). A damaged state file is not fatal: the queue
is re-derived from the store (pending = committed and newer than what the bucket's head names).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.format.canonical import canonical_bytes
from appliance.format.remote import upload_pending
from appliance.storage import LocalStorage, write_durable

STATE_FILE = "replication.json"
SEEN_FILE = "heads-seen.json"
FORMAT = "appliance.replication"


@dataclass(frozen=True)
class Replicated:
    generation: int
    manifest_digest: str
    sequence: int
    at: str


@dataclass(frozen=True)
class ReplicationState:
    device: str
    replicated: Replicated | None = None
    pending_generation: int | None = None
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float | None = None  # wall-clock seconds; None = now
    uploads: int = 0  # checkpoints whose head was published
    blobs_uploaded: int = 0
    blobs_skipped: int = 0  # already in the bucket with their size
    bytes_uploaded: int = 0
    failures: int = 0
    retries: int = 0  # attempts started while a previous one had failed
    last_success_at: float | None = None  # wall-clock seconds of the last published head
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # last 20 outcomes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = list(self.history)
        return {"format": FORMAT, "version": 1, **d}

    @classmethod
    def from_dict(cls, obj: Any) -> ReplicationState:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != 1:
            raise ValueError("not a replication state v1")
        d = {k: v for k, v in obj.items() if k not in ("format", "version")}
        rep = d.get("replicated")
        d["replicated"] = Replicated(**rep) if rep else None
        d["history"] = tuple(d.get("history", ()))
        return cls(**d)

    def pending(self, newest_local: int | None) -> int | None:
        """The generation still to upload (``appliance.format.remote.upload_pending``), given the newest local one."""
        done = self.replicated.generation if self.replicated is not None else None
        return upload_pending(replicated=done, pending_generation=self.pending_generation, newest_local=newest_local)

    def with_outcome(self, entry: dict[str, Any], **changes: Any) -> ReplicationState:
        return replace(self, history=(*self.history, entry)[-20:], **changes)


class StateDir:
    """The replicator's directory; every write durable (temp -> fsync -> rename -> fsync dir)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.storage = LocalStorage(self.path)

    def _read(self, name: str) -> Any:
        try:
            return json.loads(self.storage.read(name, 1024 * 1024))
        except FileNotFoundError:
            return None
        except (ApplianceError, ValueError):
            return None  # damaged: re-derived

    def load(self, device: str) -> ReplicationState:
        obj = self._read(STATE_FILE)
        try:
            state = ReplicationState.from_dict(obj) if obj is not None else None
        except (TypeError, ValueError):
            state = None
        return state if state is not None and state.device == device else ReplicationState(device)

    def save(self, state: ReplicationState) -> None:
        write_durable(self.storage, STATE_FILE, canonical_bytes(state.to_dict()) + b"\n")

    def seen(self, prefix: str) -> int:
        obj = self._read(SEEN_FILE)
        value = obj.get(prefix, 0) if isinstance(obj, dict) else 0
        return value if isinstance(value, int) else 0

    def raise_seen(self, prefix: str, sequence: int) -> None:
        obj = self._read(SEEN_FILE)
        seen = obj if isinstance(obj, dict) else {}
        if sequence > seen.get(prefix, 0):
            seen[prefix] = sequence
            write_durable(self.storage, SEEN_FILE, canonical_bytes(seen) + b"\n")
