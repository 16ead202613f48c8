"""The portable checkpoint layout (USB stick, object store) and the import decisions, as pure rules.

Owns: the names of every file in a portable layout (docs/design.md §11), parsing names read
back from a listing, the blobs a verified manifest needs, and the decision whether a verified
source checkpoint may be imported (``decide_import``). Does not own reading or writing
anything (``appliance.transfer`` does the I/O at the edge).

Layout, relative to the layout root (a directory on a FAT/exFAT stick, or a key prefix)::

    blobs/<hh>/<sha256-hex>                 any content-addressed blob (frames; assets when
                                            manifests name them); <hh> = first 2 hex digits
    bundles/<gen:020d>-<sha256-hex>.json    a signed bundle; the hex is the SHA-256 of its bytes

Every name is lowercase ASCII (digits, ``a-f``, ``bundles``, ``blobs``, ``.json``), so it
survives FAT's case folding and is a valid object key; no name exceeds 90 characters and no
directory holds more than 256 subdirectories or the blobs whose digest shares two hex digits
(FAT32 holds ~10,900 such long names per directory, so ~2.8 million blobs in all).
Files are written once under their final name and never changed: the name is the content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from appliance.errors import OlderCheckpointError, RollbackError
from appliance.format.digest import Digest
from appliance.format.manifest import Manifest

PORTABLE_VERSION = 1
BLOBS = "blobs"
BUNDLES = "bundles"
BUNDLE_SUFFIX = ".json"
MAX_PORTABLE_FILE = 4 * 1024**3 - 1  # FAT32's file size limit; every blob (<= 64 MiB frames) is far below
_BUNDLE_NAME = re.compile(r"(\d{20})-([0-9a-f]{64})\.json")
_FAN = re.compile(r"[0-9a-f]{2}")


@dataclass(frozen=True, order=True)
class BlobRef:
    """One content-addressed blob a checkpoint needs: its kind (``frame``: asset bytes are frames too), digest, size."""

    kind: str
    digest: Digest
    size: int


@dataclass(frozen=True, order=True)
class BundleName:
    """A bundle's name in the layout: its generation and the SHA-256 of its exact bytes."""

    generation: int
    digest: Digest

    @property
    def key(self) -> str:
        return bundle_key(self.generation, self.digest)


def blob_key(digest: Digest) -> str:
    return f"{BLOBS}/{digest.hex[:2]}/{digest.hex}"


def blob_fan_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.hex[:2]}"


def bundle_key(generation: int, digest: Digest) -> str:
    return f"{BUNDLES}/{generation:020d}-{digest.hex}{BUNDLE_SUFFIX}"


def parse_bundle_name(name: str) -> BundleName | None:
    """A file name from ``bundles/`` as ``BundleName``; ``None`` for anything else (junk is ignored)."""
    m = _BUNDLE_NAME.fullmatch(name)
    if m is None or int(m[1]) == 0:
        return None
    return BundleName(int(m[1]), Digest(m[2]))


def is_fan_dir(name: str) -> bool:
    return _FAN.fullmatch(name) is not None


def required_blobs(manifest: Manifest) -> list[BlobRef]:
    """Every blob the checkpoint needs to be self-contained, each once, in digest order.

    Frames: tensor frames, delta bases and asset frames (a v2 manifest's assets are stored as
    frames, docs/design.md §4.5, so ``frame_index`` names every blob; an asset's whole-file
    SHA-256 is not a blob name).
    """
    found: dict[Digest, BlobRef] = {}
    for frame in manifest.frame_index().values():
        found.setdefault(frame.digest, BlobRef("frame", frame.digest, frame.size))
    return sorted(found.values(), key=lambda b: b.digest)


@dataclass(frozen=True)
class LocalCheckpoint:
    """A committed checkpoint already on the node, as the import decision sees it."""

    slot: str
    generation: int
    manifest_digest: Digest
    complete: bool = True  # every blob present with its size (it opens as boot opens it)


@dataclass(frozen=True)
class ImportDecision:
    """``already``: the same checkpoint is committed in ``slot``; else import it."""

    already: bool
    slot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"already": self.already, "slot": self.slot}


def decide_import(
    generation: int,
    manifest_digest: Digest,
    *,
    floor: int,
    local: list[LocalCheckpoint],
    seen: set[int],
) -> ImportDecision:
    """May a verified source checkpoint be imported? Total over its inputs; raises the refusal.

    * the same checkpoint (generation and manifest digest) already committed and complete: nothing
      to do; committed but incomplete (blobs lost): import it again (a repair into the other slot);
    * below the anti-rollback floor: ``RollbackError`` (39);
    * not newer than every checkpoint that opens on the node, or its generation already names
      another checkpoint's file here (boot refuses BAD checkpoints by number): ``OlderCheckpointError`` (29).
    """
    same = [c for c in local if c.generation == generation and c.manifest_digest == manifest_digest]
    for have in same:
        if have.complete:
            return ImportDecision(True, have.slot)
    if generation < floor:
        raise RollbackError(f"generation {generation} is below this node's anti-rollback floor {floor}")
    newest = max((c.generation for c in local if c not in same), default=0)
    if generation <= newest:
        raise OlderCheckpointError(
            f"the source checkpoint (generation {generation}) is not newer than this node's newest "
            f"valid checkpoint (generation {newest})"
        )
    if generation in seen and not same:
        raise OlderCheckpointError(
            f"generation {generation} already names another (uncommitted or damaged) checkpoint on this node",
            remedy="run `appliance gc ROOT` to remove leftovers, or import a newer checkpoint",
        )
    return ImportDecision(False)
