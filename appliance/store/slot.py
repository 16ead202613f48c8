"""Reading one slot: its commit records, bundles and frames, each checked before it is returned.

Owns: ``SlotReader`` — listing, parsing commit records, reading a bundle that matches its
record, and reading a frame whose size and SHA-256 match its ``FrameRef``. Does not own
deciding which checkpoint to use (``discovery``) or decoding frames (``restore``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from appliance.errors import (
    ApplianceError,
    FrameError,
    FrameMissingError,
    ManifestError,
    SlotUnavailableError,
    StorageError,
)
from appliance.format.commit import CommitRecord
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.storage import Storage
from appliance.store import layout


@dataclass(frozen=True)
class RecordOutcome:
    """A commit-record file: parsed (``record``) or refused (``error``)."""

    slot: str
    generation: int
    record: CommitRecord | None
    error: ApplianceError | None = None


class SlotReader:
    def __init__(self, storage: Storage, slot: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.storage = storage
        self.slot = slot
        self.limits = limits

    def available(self) -> bool:
        try:
            return self.storage.listdir(self.slot) is not None
        except (StorageError, ApplianceError):
            return False

    def require_available(self) -> None:
        if not self.available():
            raise SlotUnavailableError(f"slot {self.slot} is missing, unmounted or unreadable")

    def checkpoint_names(self) -> list[tuple[int, str, str]]:
        """``(generation, kind, file name)`` for every checkpoint file in the slot."""
        names = self.storage.listdir(layout.checkpoints_dir(self.slot)) or []
        found = []
        for name in names:
            parsed = layout.parse_checkpoint_name(name)
            if parsed is not None:
                found.append((parsed[0], parsed[1], name))
        return found

    def generations_seen(self) -> set[int]:
        return {gen for gen, _, _ in self.checkpoint_names()}

    def records(self) -> list[RecordOutcome]:
        """Every commit record in the slot, newest first; a bad one becomes an ``error``."""
        outcomes = []
        for gen, kind, _ in sorted(self.checkpoint_names(), reverse=True):
            if kind == "commit":
                outcomes.append(self._record(gen))
        return outcomes

    def _record(self, generation: int) -> RecordOutcome:
        try:
            data = self.storage.read(layout.record_path(self.slot, generation), self.limits.commit_record_max_bytes)
            record = CommitRecord.from_bytes(data, self.limits)
            if record.slot != self.slot or record.generation != generation:
                raise ManifestError(
                    f"commit record for {record.slot}/{record.generation} found at {self.slot}/{generation}"
                )
            return RecordOutcome(self.slot, generation, record)
        except FileNotFoundError:
            return RecordOutcome(self.slot, generation, None, ManifestError("commit record vanished while read"))
        except ApplianceError as exc:
            return RecordOutcome(self.slot, generation, None, exc)

    def read_bundle(self, record: CommitRecord) -> bytes:
        """The bundle file, only if it is byte-for-byte the one the record committed."""
        path = layout.bundle_path(self.slot, record.generation)
        try:
            data = self.storage.read(path, self.limits.manifest_max_bytes)
        except FileNotFoundError as exc:
            raise ManifestError(f"{path} is missing but its commit record exists") from exc
        if len(data) != record.bundle_size or Digest.of(data) != record.bundle_digest:
            raise ManifestError(f"{path} is not the manifest its commit record names (altered or swapped)")
        return data

    def frame_size(self, digest: Digest) -> int | None:
        return self.storage.size(layout.frame_path(self.slot, digest))

    def check_present(self, frame: FrameRef) -> None:
        """Cheap presence check (no read): the file exists with the stored size."""
        size = self.frame_size(frame.digest)
        if size is None:
            raise FrameMissingError(f"frame {frame.digest.short()} is missing from slot {self.slot}")
        if size != frame.size:
            raise FrameError(
                f"frame {frame.digest.short()} in slot {self.slot} has {size} bytes, expected {frame.size}"
            )

    def read_frame(self, frame: FrameRef, buf: bytearray | memoryview | None = None) -> memoryview:
        """Stored bytes of ``frame``, verified against its SHA-256 before anyone decodes them.

        ``buf`` (writable, at least ``frame.size`` bytes) receives them when given, e.g. a slice
        of a pinned staging buffer, so the bytes are read once and never copied again.
        """
        data = self.read_frame_unverified(frame, buf)
        self.verify_frame(frame, data)
        return data

    def read_frame_unverified(self, frame: FrameRef, buf: bytearray | memoryview | None = None) -> memoryview:
        """Stored bytes of ``frame`` with their size checked; call ``verify_frame`` before use."""
        path = layout.frame_path(self.slot, frame.digest)
        if buf is not None and len(buf) >= frame.size:
            out = memoryview(buf)[: frame.size]
        else:
            out = memoryview(bytearray(frame.size))
        try:
            size = self.storage.read_into(path, out)
        except FileNotFoundError as exc:
            raise FrameMissingError(f"frame {frame.digest.short()} is missing from slot {self.slot}") from exc
        if size != frame.size:
            raise FrameError(
                f"frame {frame.digest.short()} in slot {self.slot} has {size} bytes, expected {frame.size}"
            )
        return out

    def verify_frame(self, frame: FrameRef, data: memoryview) -> None:
        if hashlib.sha256(data).hexdigest() != frame.digest.hex:
            raise FrameError(f"frame {frame.digest.short()} in slot {self.slot} fails its SHA-256 (corrupted)")
