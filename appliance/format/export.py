"""A state export: what the model service drops into the outbox for the persistence watchdog.

Owns: ``ExportInfo`` (the ``appliance.export`` entry of the export file's safetensors header),
the content digest that binds it to the tensor bytes, the outbox file-name rule, and the
checkpoint metadata a commit of the export carries. Does not own writing or reading the file
(``appliance.sources.export``) or committing it (``appliance.persist``).

The content digest is SHA-256 over, for every tensor in name order: the length-prefixed name,
dtype and shape, then the length-prefixed bytes (``content_chunk`` absent: the serial form every
export had until issue 16). With ``content_chunk`` = C (the chunked form, written since), the
bytes are replaced by the tensor's byte count and the SHA-256 of each of its C-byte pieces, cut
as the store cuts frames (``format.plan.frame_spans``): the pieces hash on every core, and a
commit into a store whose frames are C bytes records those very digests as its frames' raw
digests instead of hashing the bytes a second time (docs/design.md §9.2). A truncated,
bit-rotten or spliced export fails either form and is quarantined instead of being signed.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canary import Canary
from appliance.format.canonical import canonical_bytes, get_int, get_str, require_keys, strict_loads
from appliance.format.digest import Digest
from appliance.format.journal import Point
from appliance.format.plan import frame_spans

EXPORT_FORMAT = "appliance.export"
EXPORT_VERSION = 1
CONTENT_CHUNK = 4 << 20  # the chunked digest's piece size: the store's default frame size
HEADER_KEY = "appliance.export"
TRAINING_KEY = "appliance.training"  # checkpoint metadata: the training record (appliance.training)
SUFFIX = ".safetensors"
_NAME = re.compile(r"export-(\d{20})\.safetensors")


def export_name(sequence: int) -> str:
    """Outbox file name for the export with this sequence number; names sort in export order."""
    return f"export-{sequence:020d}{SUFFIX}"


def export_sequence(name: str) -> int | None:
    """The sequence number of an outbox file name, ``None`` for anything else."""
    m = _NAME.fullmatch(name)
    return int(m[1]) if m else None


class ContentHasher:
    """Incremental content digest; feed tensors in name order."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._last: str | None = None

    def add(self, name: str, dtype: str, shape: tuple[int, ...], data: bytes | memoryview) -> None:
        if self._last is not None and name <= self._last:
            raise ValueError("tensors must be hashed in strictly increasing name order")
        self._last = name
        for part in (name.encode("utf-8"), dtype.encode("ascii"), canonical_bytes(list(shape))):
            self._h.update(struct.pack("<Q", len(part)) + part)
        view = memoryview(data).cast("B")
        self._h.update(struct.pack("<Q", len(view)))
        self._h.update(view)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class ChunkedContentHasher:
    """The chunked content digest (``content_chunk``); feed tensors in name order with their piece digests.

    ``pieces``: the 32-byte SHA-256 of each span of ``chunk_spans(nbytes, itemsize, chunk)``, in order.
    """

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self._h = hashlib.sha256(b"appliance.content.chunked\x00" + struct.pack("<Q", chunk))
        self._last: str | None = None

    def add(self, name: str, dtype: str, shape: tuple[int, ...], nbytes: int, pieces: Iterable[bytes]) -> None:
        if self._last is not None and name <= self._last:
            raise ValueError("tensors must be hashed in strictly increasing name order")
        self._last = name
        for part in (name.encode("utf-8"), dtype.encode("ascii"), canonical_bytes(list(shape))):
            self._h.update(struct.pack("<Q", len(part)) + part)
        digests = list(pieces)
        self._h.update(struct.pack("<QQ", nbytes, len(digests)))
        for d in digests:
            if len(d) != 32:
                raise ValueError("a piece digest is 32 bytes")
            self._h.update(d)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def chunk_spans(nbytes: int, itemsize: int, chunk: int) -> list[tuple[int, int]]:
    """The (offset, size) pieces of one tensor's bytes under the chunked digest: the store's frame cut."""
    return frame_spans(nbytes, itemsize, chunk)


def check_content_chunk(value: Any) -> int:
    """``content_chunk`` of a header: a multiple of 16 between 4 KiB and 64 MiB (a valid frame size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value % 16 or not 4096 <= value <= 64 << 20:
        raise ManifestError("export header content_chunk must be a multiple of 16 between 4 KiB and 64 MiB")
    return value


def content_digest(items: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]]) -> str:
    hasher = ContentHasher()
    for name, dtype, shape, data in sorted(items, key=lambda item: item[0]):
        hasher.add(name, dtype, shape, data)
    return hasher.hexdigest()


@dataclass(frozen=True)
class ExportInfo:
    model: str  # the service's model entry point (informational)
    step: int  # adaptation steps applied to this state
    created: str
    content_sha256: str
    tensors: int
    raw_bytes: int
    pause_s: float  # how long serving was paused to capture this state
    canary: Canary | None = None
    source: dict[str, Any] | None = None  # the checkpoint the service restored: slot, generation, digest
    journal: dict[str, Any] | None = None  # the adaptation journal point this state includes (issue 17)
    training: dict[str, Any] | None = None  # the training record (appliance.training) of this state
    content_chunk: int | None = None  # None: the serial content digest; else the chunked one's piece size

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "model": self.model,
            "step": self.step,
            "created": self.created,
            "content_sha256": self.content_sha256,
            "tensors": self.tensors,
            "raw_bytes": self.raw_bytes,
            "pause_s": self.pause_s,
            "canary": self.canary.to_dict() if self.canary else None,
            "source": self.source,
        }
        if self.journal is not None:  # absent, not null: exports without a journal keep their v1 header
            out["journal"] = self.journal
        if self.training is not None:  # likewise
            out["training"] = self.training
        if self.content_chunk is not None:  # likewise: absent means the serial digest
            out["content_chunk"] = self.content_chunk
        return out

    def header_value(self) -> str:
        return canonical_bytes(self.to_dict()).decode("utf-8")

    @classmethod
    def from_header(cls, value: str | None) -> ExportInfo:
        if value is None:
            raise ManifestError(f"the file has no {HEADER_KEY!r} entry: it is not a state export")
        obj = strict_loads(value.encode("utf-8"), what="export header", max_bytes=4 << 20, max_depth=16)
        keys = set(cls("", 0, "", "0" * 64, 0, 0, 0.0).to_dict())
        d = require_keys(obj, "export header", keys, frozenset({"journal", "training", "content_chunk"}))
        if d["format"] != EXPORT_FORMAT or d["version"] != EXPORT_VERSION:
            raise ManifestError("not a v1 state export")
        pause = d["pause_s"]
        if isinstance(pause, bool) or not isinstance(pause, int | float) or pause < 0:
            raise ManifestError("export header pause_s must be a non-negative number")
        if d["source"] is not None and not isinstance(d["source"], dict):
            raise ManifestError("export header source must be an object")
        return cls(
            model=get_str(d, "model", "export", 512),
            step=get_int(d, "step", "export", 0, 2**63 - 1),
            created=get_str(d, "created", "export", 64),
            content_sha256=Digest.parse(d["content_sha256"], "export content_sha256").hex,
            tensors=get_int(d, "tensors", "export", 0, 1_000_000),
            raw_bytes=get_int(d, "raw_bytes", "export", 0, 1 << 42),
            pause_s=float(pause),
            canary=None if d["canary"] is None else Canary.from_dict(d["canary"]),
            source=d["source"],
            journal=_journal_point(d.get("journal")),
            training=_training_record(d.get("training")),
            content_chunk=None if "content_chunk" not in d else check_content_chunk(d["content_chunk"]),
        )

    def checkpoint_metadata(self) -> dict[str, Any]:
        """The signed metadata of the checkpoint this export becomes."""
        meta: dict[str, Any] = {
            "step": self.step,
            "exported": self.created,
            "model_entry": self.model,
            "export_pause_s": round(self.pause_s, 6),
            "content_sha256": self.content_sha256,
        }
        if self.content_chunk is not None:
            meta["content_chunk"] = self.content_chunk
        if self.canary is not None:
            meta["canary"] = self.canary.to_dict()
        if self.source is not None:
            meta["derived_from"] = self.source
        if self.journal is not None:
            meta["journal"] = self.journal
        if self.training is not None:
            meta[TRAINING_KEY] = self.training
        return meta


def _training_record(value: Any) -> dict[str, Any] | None:
    """The export's training record: ``{"version": int, "state": {...}}`` (its skeleton is checked
    against the tensors when ``appliance.training.load`` resumes the checkpoint)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"version", "state"} or not isinstance(value["state"], dict):
        raise ManifestError("export header training must be an object with version and state")
    get_int(value, "version", "export training", 1, 1 << 16)
    return value


def _journal_point(value: Any) -> dict[str, Any] | None:
    point = Point.from_metadata({"journal": value})
    return point.to_dict() if point else None
