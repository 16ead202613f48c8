"""Export: write committed checkpoints into a portable layout (a directory on a USB stick).

Owns: ``export_checkpoints`` — choose the checkpoint(s) (newest that opens, or exactly the given
generations), copy every blob each needs, verified as read from its slot, then the signed bundle
last (the same order as a commit: nothing names a blob before the blob is durable). Re-running
resumes: a blob already in the destination with its size and SHA-256 is skipped, a damaged one
is replaced (atomic rename). Does not own the layout's names (``appliance.format.portable``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, LimitExceededError
from appliance.format.digest import Digest
from appliance.format.portable import (
    BLOBS,
    BUNDLES,
    MAX_PORTABLE_FILE,
    BlobRef,
    blob_fan_dir,
    blob_key,
    bundle_key,
    required_blobs,
)
from appliance.storage import DurableBatch, Storage, write_durable
from appliance.store.discovery import OpenCheckpoint
from appliance.store.slot import SlotReader
from appliance.store.store import Store
from appliance.transfer.slotblobs import read_slot_blob

Progress = Callable[[int], None]


@dataclass
class ExportResult:
    generations: list[int] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    blobs: int = 0
    blobs_written: int = 0
    blobs_skipped: int = 0  # already there and verified
    bytes_written: int = 0
    bytes_total: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["seconds"] = round(self.seconds, 6)
        return out


def plan_export_bytes(opened: Sequence[OpenCheckpoint]) -> int:
    seen: dict[Digest, int] = {}
    for cp in opened:
        for blob in required_blobs(cp.verified.manifest):
            seen[blob.digest] = blob.size
    return sum(seen.values())


def select_for_export(store: Store, generations: Sequence[int] | None) -> list[OpenCheckpoint]:
    """The checkpoints to export, each opened by the store's own discovery (signature, model, frames)."""
    if not generations:
        return [store.select().opened]
    return [store.select(g).opened for g in sorted(set(generations))]


def export_checkpoints(
    store: Store,
    dest: Storage,
    opened: Sequence[OpenCheckpoint],
    progress: Progress | None = None,
) -> ExportResult:
    start = time.perf_counter()
    result = ExportResult()
    _ensure_dir(dest, "", BUNDLES)
    _ensure_dir(dest, "", BLOBS)
    done: set[Digest] = set()
    for cp in opened:
        reader = SlotReader(store.storage, cp.slot, store.limits)
        bundle = reader.read_bundle(cp.record)
        batch = DurableBatch(dest)
        for blob in required_blobs(cp.verified.manifest):
            if blob.digest in done:
                continue
            done.add(blob.digest)
            _export_blob(dest, batch, reader, blob, result)
            if progress is not None:
                progress(blob.size)
        batch.sync()  # every blob durable before the bundle that names them
        key = bundle_key(cp.generation, Digest.of(bundle))
        if not _present(dest, key, len(bundle), Digest.of(bundle)):
            write_durable(dest, key, bundle)
            result.bytes_written += len(bundle)
        result.generations.append(cp.generation)
        result.bundles.append(key)
    result.seconds = time.perf_counter() - start
    return result


def _export_blob(dest: Storage, batch: DurableBatch, reader: SlotReader, blob: BlobRef, result: ExportResult) -> None:
    if blob.size > MAX_PORTABLE_FILE:
        raise LimitExceededError(f"blob {blob.digest.short()} is {blob.size} bytes; FAT holds files below 4 GiB")
    result.blobs += 1
    result.bytes_total += blob.size
    key = blob_key(blob.digest)
    if _present(dest, key, blob.size, blob.digest):
        result.blobs_skipped += 1
        return
    data = read_slot_blob(reader, blob)  # verified against its SHA-256 as read from the slot
    _ensure_dir(dest, BLOBS, blob_fan_dir(blob.digest).rpartition("/")[2])
    batch.add(key, data)
    result.blobs_written += 1
    result.bytes_written += blob.size


def _present(dest: Storage, key: str, size: int, digest: Digest) -> bool:
    """Already exported: the file exists with its size and SHA-256 (a damaged copy is rewritten)."""
    try:
        if dest.size(key) != size:
            return False
        return Digest.of(dest.read(key, size)) == digest
    except ApplianceError:
        return False


def _ensure_dir(dest: Storage, parent: str, name: str) -> None:
    path = f"{parent}/{name}" if parent else name
    if dest.listdir(path) is None:
        dest.mkdir(path)
        dest.fsync_dir(parent)
