"""Bucket retention as pure rules: which bundles and blobs of a replica ``appliance remote prune`` deletes.

Owns: recognising the keys of a replica (``parse_blob_key``; bundle names are
``appliance.format.portable``'s; anything else is not ours and is never deleted), ``bundles_to_keep``
and ``blobs_to_delete``. Does no I/O (``appliance.remote.prune`` lists, reads and deletes).

Rules (docs/design.md §11.7):

* Kept bundles: the one the verified head names; the ``keep`` newest (by generation); every bundle at
  or above the anti-rollback floor (the node could still restore it). The rest are pruned, oldest first.
* A blob is deleted only if no kept bundle references it **and** it is either referenced by a pruned
  bundle or was uploaded before the newest kept bundle was. A blob uploaded after that (a concurrent
  upload that has not yet written its bundle) and one no bundle names that is younger are kept.
* Bundles are deleted before blobs, so a reader that follows the head finds every blob at every moment.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from appliance.errors import UsageError
from appliance.format.digest import Digest
from appliance.format.portable import BLOBS, BundleName

_BLOB_KEY = re.compile(rf"{BLOBS}/([0-9a-f]{{2}})/([0-9a-f]{{64}})")


@dataclass(frozen=True)
class BucketObject:
    """One listed object under the replica's prefix: its key (relative), size, upload time (unix seconds)."""

    key: str
    size: int
    modified: float


def parse_blob_key(key: str) -> Digest | None:
    """The digest a ``blobs/<hh>/<sha256>`` key names (``<hh>`` its first two digits); ``None`` for anything else."""
    m = _BLOB_KEY.fullmatch(key)
    return Digest(m[2]) if m is not None and m[2].startswith(m[1]) else None


def bundles_to_keep(
    bundles: Sequence[BundleName], *, head: BundleName, floor: int, keep: int
) -> tuple[list[BundleName], list[BundleName]]:
    """``(kept, pruned)``, each oldest first; ``keep`` >= 1 (``UsageError`` otherwise)."""
    if keep < 1:
        raise UsageError(f"--keep must be at least 1, got {keep}", remedy="keep at least the head's bundle: --keep 1")
    ordered = sorted(set(bundles), reverse=True)
    newest = set(ordered[:keep])
    kept = [b for b in ordered if b == head or b in newest or b.generation >= floor]
    pruned = [b for b in ordered if b not in kept]
    return sorted(kept), sorted(pruned)


def blobs_to_delete(
    blobs: Sequence[BucketObject],
    *,
    kept_refs: Collection[Digest],
    pruned_refs: Collection[Digest],
    cutoff: float,
) -> list[BucketObject]:
    """Blobs no kept bundle needs that a pruned bundle named or that are older than ``cutoff`` (the newest
    kept bundle's upload time); only well-formed blob keys are ever returned."""
    out = []
    for blob in blobs:
        digest = parse_blob_key(blob.key)
        if digest is None or digest in kept_refs:
            continue
        if digest in pruned_refs or blob.modified < cutoff:
            out.append(blob)
    return out
