"""The fleet channel's inbox as pure rules: its names, what the network side stages, what it tidies,
and how the store's writer treats a staged release it could not import.

Owns: the inbox layout (docs/design.md §11.6) — the portable layout of §11.1 holding *only* the
blobs the node lacks, plus the channel's signed ``head.json`` written last (the hand-off point) —,
``blobs_to_stage`` (which blobs the network side downloads), ``stale_keys`` (which inbox files
no longer serve the head) and ``retry_import`` (a failure the writer retries with backoff, or a
refusal it remembers until the head changes). Does no I/O.

Trust: nothing in the inbox is trusted by its reader. The channel program (``appliance-channel``)
writes it; the persistence watchdog (``appliance-persist``, the store's only writer) imports from
it exactly as from a USB stick: head signature and binding, bundle signature and key role, floor,
"newer than the node", SHA-256 of every blob as read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from appliance.errors import ApplianceError, FrameError, PartialCheckpointError, StorageError
from appliance.format.digest import Digest
from appliance.format.portable import BLOBS, BUNDLES, BlobRef, blob_key

INBOX_HEAD = "head.json"  # the channel head the staged bundle belongs to; written last, removed first


def blobs_to_stage(required: Sequence[BlobRef], held: Collection[Digest]) -> list[BlobRef]:
    """The blobs the network side must download: every required one the node does not hold verified."""
    return [b for b in required if b.digest not in held]


def stale_keys(present: Iterable[str], keep_bundle: str | None, keep_blobs: Iterable[BlobRef]) -> list[str]:
    """Inbox files (``bundles/…``, ``blobs/…``) that the current head does not need: bundles first, so a
    reader never finds a bundle whose blobs were already removed."""
    keep = {blob_key(b.digest) for b in keep_blobs} | ({keep_bundle} if keep_bundle else set())
    stale = [k for k in present if k not in keep and k.startswith((BUNDLES + "/", BLOBS + "/"))]
    return sorted(stale, key=lambda k: (not k.startswith(BUNDLES + "/"), k))


def retry_import(exc: ApplianceError) -> bool:
    """Whether a failed import of a staged release is retried (with backoff) or remembered as refused.

    Retried: the medium or the store failed (``StorageError``: full, locked, unavailable, a file that
    vanished while the channel replaced it), a blob is missing or does not hash (``PartialCheckpointError``,
    ``FrameError``: the network side may still be staging). Refused until the head changes: everything
    that judges the release itself (signature, key role, head binding, floor, older than the node, model).
    """
    return isinstance(exc, StorageError | FrameError | PartialCheckpointError)
