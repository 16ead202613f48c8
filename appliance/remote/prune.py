"""Bucket retention: ``appliance remote prune`` deletes old bundles, then blobs no kept bundle needs.

Owns: ``prune_replica`` — under this node's device prefix only: verify the head (the node's head
keys, device, model), list the replica (bundles and blobs by their exact names; every other key is
not ours and stays), decide with ``appliance.format.retention``, delete the pruned bundles oldest
first, list the bundles again (a bundle a concurrent upload wrote since is kept, with every blob it
names), then delete the blobs the rules allow. Nothing is deleted when the replica's state cannot be
established (``PruneRefusedError``, 87): an upload pending in the replicator's queue, no verified
head, the head's bundle missing or not the head's manifest, a kept bundle that does not parse.
``dry_run`` decides and reports, deleting nothing. Design: docs/design.md §11.7.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, PruneRefusedError
from appliance.format.digest import Digest
from appliance.format.portable import BUNDLES, BundleName, parse_bundle_name, required_blobs
from appliance.format.retention import BucketObject, blobs_to_delete, bundles_to_keep, parse_blob_key
from appliance.format.statement import parse_bundle, parse_statement
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.remote.pull import fetch_head
from appliance.remote.s3 import ObjectStore
from appliance.signing import PublicKey

LIST_LIMIT = 10_000_000  # keys listed under one device prefix (a replica of ~2.8 M blobs fits)


@dataclass
class PruneReport:
    prefix: str
    dry_run: bool
    keep: int
    floor: int
    head_generation: int
    bundles_kept: list[str] = field(default_factory=list)
    bundles_deleted: list[str] = field(default_factory=list)
    blobs_kept: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    not_ours: int = 0  # keys under the prefix that are neither the head, a bundle nor a blob: left alone
    late_bundles: list[str] = field(default_factory=list)  # written by a concurrent upload during the prune

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def prune_replica(
    objects: ObjectStore,
    *,
    head_keys: Sequence[PublicKey],
    device: str,
    model: str,
    floor: int,
    keep: int,
    dry_run: bool = False,
    pending: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> PruneReport:
    """Prune the replica under ``objects``' prefix (the node's device prefix); see the module docstring."""
    if pending is not None:
        raise PruneRefusedError(
            f"the replicator has generation {pending} pending (an upload may be under way); nothing was deleted",
            remedy="wait until `appliance remote status` shows nothing pending, then prune",
        )
    try:
        head = fetch_head(objects, head_keys, kind="device", name=device, model=model, last_seen=0, floor=0)
    except ApplianceError as exc:
        raise PruneRefusedError(f"the replica's head cannot be verified ({type(exc).__name__}: {exc.problem}); "
                                "nothing was deleted") from exc  # fmt: skip
    bundles, blobs, not_ours = _list(objects)
    if head.bundle not in bundles:
        raise PruneRefusedError(f"the head names {head.bundle.key}, which is not in the bucket: the replica is not "
                                "restorable now, and pruning would not make it so; nothing was deleted")  # fmt: skip
    kept, pruned = bundles_to_keep(list(bundles), head=head.bundle, floor=floor, keep=keep)
    kept_refs = _refs(objects, kept, limits, strict=True, head_manifest=(head.bundle, head.manifest_digest))
    pruned_refs = _refs(objects, pruned, limits, strict=False)
    report = PruneReport(objects.prefix, dry_run, keep, floor, head.generation, bundles_kept=[b.key for b in kept])
    report.not_ours = not_ours
    cutoff = bundles[max(kept)].modified
    for name in pruned:  # bundles first, oldest first: the head's bundle and its blobs stay readable throughout
        if not dry_run:
            objects.delete(name.key)
        report.bundles_deleted.append(name.key)
    if not dry_run:  # a bundle a concurrent upload wrote since the listing is kept, with its blobs
        late = [b for b in _list(objects)[0] if b not in bundles]
        kept_refs |= _refs(objects, late, limits, strict=True)
        report.late_bundles = [b.key for b in late]
    doomed = blobs_to_delete(blobs, kept_refs=kept_refs, pruned_refs=pruned_refs, cutoff=cutoff)
    for blob in doomed:
        if not dry_run:
            objects.delete(blob.key)
        report.blobs_deleted += 1
        report.bytes_freed += blob.size
    report.blobs_kept = len(blobs) - len(doomed)
    return report


def _list(objects: ObjectStore) -> tuple[dict[BundleName, BucketObject], list[BucketObject], int]:
    """The replica's bundles and blobs by exact name; the count of other keys (never touched)."""
    bundles: dict[BundleName, BucketObject] = {}
    blobs: list[BucketObject] = []
    other = 0
    for key, size, modified in objects.list_info("", limit=LIST_LIMIT):
        obj = BucketObject(key, size, modified)
        folder, _, name = key.partition("/")
        bundle = parse_bundle_name(name) if folder == BUNDLES else None
        if bundle is not None and bundle.key == key:
            bundles[bundle] = obj
        elif parse_blob_key(key) is not None:
            blobs.append(obj)
        elif key != "head.json":
            other += 1
    return bundles, blobs, other


def _refs(
    objects: ObjectStore,
    names: Iterable[BundleName],
    limits: Limits,
    *,
    strict: bool,
    head_manifest: tuple[BundleName, Digest] | None = None,
) -> set[Digest]:
    """The blobs the bundles name (parsed, not trusted: a reference only ever keeps more). ``strict``: a bundle
    that cannot be read or parsed refuses the prune (its blobs are unknown); else it is skipped."""
    refs: set[Digest] = set()
    for name in names:
        try:
            data = objects.get(name.key, limits.manifest_max_bytes)
            if Digest.of(data) != name.digest:
                raise PruneRefusedError(f"{name.key} is not the bundle its name promises (altered or truncated)")
            manifest = parse_statement(parse_bundle(data, limits).payload, limits)
            if head_manifest is not None and name == head_manifest[0] and manifest.digest() != head_manifest[1]:
                raise PruneRefusedError(f"the head's bundle {name.key} holds another manifest than the head names")
        except (ApplianceError, FileNotFoundError) as exc:
            if not strict:
                continue
            problem = exc.problem if isinstance(exc, ApplianceError) else "it vanished"
            raise PruneRefusedError(f"kept bundle {name.key} cannot be read ({problem}), so the blobs it needs are "
                                    "unknown; nothing more was deleted") from exc  # fmt: skip
        refs.update(b.digest for b in required_blobs(manifest))
    return refs
