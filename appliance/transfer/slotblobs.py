"""Where a blob of a checkpoint lives in a slot, and reading or placing it there verified.

Owns: mapping a ``BlobRef`` (a frame today; an asset once manifests name assets) to its slot
path through ``appliance.store.layout``, reading it verified, and the "already there and valid"
check that makes imports idempotent. Does not own slot layout itself (``appliance.store.layout``).
"""

from __future__ import annotations

import hashlib

from appliance.errors import ApplianceError, FrameError, FrameMissingError, LimitExceededError, UsageError
from appliance.format.portable import BlobRef
from appliance.store import layout
from appliance.store.slot import SlotReader


def slot_blob_path(slot: str, blob: BlobRef) -> str:
    if blob.kind == "frame":
        return layout.frame_path(slot, blob.digest)
    raise UsageError(f"blob kind {blob.kind!r} has no place in a slot in this version", remedy="upgrade appliance")


def read_slot_blob(reader: SlotReader, blob: BlobRef) -> bytes:
    """The blob's bytes from ``reader``'s slot, size- and SHA-256-checked (``FrameError`` otherwise)."""
    path = slot_blob_path(reader.slot, blob)
    try:
        data = reader.storage.read(path, blob.size)
    except FileNotFoundError as exc:
        raise FrameMissingError(f"blob {blob.digest.short()} is missing from slot {reader.slot}") from exc
    except LimitExceededError as exc:
        raise FrameError(
            f"blob {blob.digest.short()} in slot {reader.slot} is larger than its {blob.size} bytes"
        ) from exc
    if len(data) != blob.size or hashlib.sha256(data).hexdigest() != blob.digest.hex:
        raise FrameError(f"blob {blob.digest.short()} in slot {reader.slot} fails its size or SHA-256 (corrupted)")
    return data


def valid_in_slot(reader: SlotReader, blob: BlobRef) -> bool:
    """The slot already holds this blob with its size and SHA-256 (a stat first, then a hash)."""
    path = slot_blob_path(reader.slot, blob)
    try:
        if reader.storage.size(path) != blob.size:
            return False
        data = reader.storage.read(path, blob.size)
    except (ApplianceError, OSError):
        return False
    return hashlib.sha256(data).hexdigest() == blob.digest.hex
