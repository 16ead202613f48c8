"""Bucket retention: ``appliance remote prune`` deletes old bundles, then blobs no kept bundle needs.

Owns: ``prune_replica`` — under this node's device prefix only: verify the head (the node's head
keys, device, model), refuse while an upload is pending, list the replica (bundles and blobs by their
exact names; every other key is not ours and stays), read and verify every bundle (an object named
like a bundle that is not the bundle its name promises is *unverified*: never kept, never deleted,
reported by key), decide with ``appliance.format.retention`` over the verified bundles, delete the
pruned bundles oldest first, list the bundles again (a bundle a concurrent upload wrote since is
kept, with every blob it names), then delete the blobs the rules allow.

Nothing is deleted when the replica's state cannot be established (``PruneRefusedError``, 87): an
upload pending (``appliance.format.remote.upload_pending``, the rule ``remote status`` shows), no
verified head, the head's bundle missing, unverifiable or not the head's manifest. Every refusal comes
before the first deletion. Credential, bucket and endpoint failures are not refusals: they keep the
object store's typed errors (``ConfigError`` 18, ``SourceUnavailableError`` 69, ``RemoteServerError``
72), exactly as ``remote pull`` reports them. ``dry_run`` decides and reports, deleting nothing.
Design: docs/design.md §11.7.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, ConfigError, PruneRefusedError, SourceUnavailableError
from appliance.format.digest import Digest
from appliance.format.portable import BUNDLES, BundleName, parse_bundle_name, required_blobs
from appliance.format.retention import BucketObject, blobs_to_delete, bundles_to_keep, parse_blob_key
from appliance.format.statement import parse_bundle, parse_statement
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.remote.pull import fetch_head
from appliance.remote.s3 import ObjectStore
from appliance.signing import PublicKey

LIST_LIMIT = 10_000_000  # keys listed under one device prefix (a replica of ~2.8 M blobs fits)
TRANSPORT_ERRORS = (ConfigError, SourceUnavailableError)  # credentials, bucket, endpoint: never a refusal


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
    unverified: dict[str, str] = field(default_factory=dict)  # bundle-named key -> why it does not verify: left

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "bundles_kept": list(self.bundles_kept), "unverified": dict(self.unverified)}


def refuse_while_pending(pending: int | None) -> None:
    """``PruneRefusedError`` when ``pending`` (``ReplicationState.pending``: the rule status shows) is set."""
    if pending is not None:
        raise PruneRefusedError(
            f"the replicator has generation {pending} pending (an upload may be under way); nothing was deleted",
            remedy="let the replicator finish (`appliance remote status` shows `pending: no`), then prune again",
        )


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
    try:
        head = fetch_head(objects, head_keys, kind="device", name=device, model=model, last_seen=0, floor=0)
    except TRANSPORT_ERRORS:
        raise  # the same code and remedy as `remote pull`: the bucket was not reached, not found wanting
    except ApplianceError as exc:
        raise PruneRefusedError(
            f"the replica's head cannot be verified ({type(exc).__name__}: {exc.problem}); nothing was deleted",
            remedy=f"check `appliance remote status` (bucket head); {exc.remedy}",
        ) from exc
    refuse_while_pending(pending)
    bundles, blobs, not_ours = _list(objects)
    if head.bundle not in bundles:
        raise PruneRefusedError(f"the head names {head.bundle.key}, which is not in the bucket: the replica is not "
                                "restorable now, and pruning would not make it so; nothing was deleted",
                                remedy=_REUPLOAD)  # fmt: skip
    refs, unverified = _read(objects, bundles, limits)
    head_problem = unverified.get(head.bundle.key)
    if head_problem is None and head.bundle in refs and refs[head.bundle][0] != head.manifest_digest:
        head_problem = "it holds another manifest than the head names"
    if head_problem is not None or head.bundle not in refs:
        raise PruneRefusedError(f"the head's bundle {head.bundle.key} does not verify ({head_problem or 'vanished'}): "
                                "the replica is not restorable now; nothing was deleted", remedy=_REUPLOAD)  # fmt: skip
    kept, pruned = bundles_to_keep(list(refs), head=head.bundle, floor=floor, keep=keep)
    kept_refs = {d for name in kept for d in refs[name][1]}
    pruned_refs = {d for name in pruned for d in refs[name][1]}
    report = PruneReport(objects.prefix, dry_run, keep, floor, head.generation, bundles_kept=[b.key for b in kept])
    report.not_ours, report.unverified = not_ours, unverified
    cutoff = bundles[max(kept)].modified
    for name in pruned:  # bundles first, oldest first: the head's bundle and its blobs stay readable throughout
        if not dry_run:
            objects.delete(name.key)
        report.bundles_deleted.append(name.key)
    if not dry_run:  # a bundle a concurrent upload wrote since the listing is kept, with its blobs
        late = {b: o for b, o in _list(objects)[0].items() if b not in bundles}
        late_refs, late_unverified = _read(objects, late, limits)
        kept_refs |= {d for _, digests in late_refs.values() for d in digests}
        report.late_bundles = [b.key for b in late_refs]
        report.unverified.update(late_unverified)
    doomed = blobs_to_delete(blobs, kept_refs=kept_refs, pruned_refs=pruned_refs, cutoff=cutoff)
    for blob in doomed:
        if not dry_run:
            objects.delete(blob.key)
        report.blobs_deleted += 1
        report.bytes_freed += blob.size
    report.blobs_kept = len(blobs) - len(doomed)
    return report


_REUPLOAD = (
    "commit a new checkpoint (or wait for the next one) and let the replicator upload it (`appliance replicate "
    "--once`): its head and bundle make the replica restorable again; then prune"
)


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


def _read(
    objects: ObjectStore, names: Iterable[BundleName], limits: Limits
) -> tuple[dict[BundleName, tuple[Digest, set[Digest]]], dict[str, str]]:
    """``({bundle: (manifest digest, blobs it names)}, {key: problem})``: every bundle read and checked against
    its name; one that is not the bundle its name promises is unverified (never kept, never deleted). A bundle
    that vanished since the listing is in neither. Transport failures propagate (typed, 18/69/72)."""
    verified: dict[BundleName, tuple[Digest, set[Digest]]] = {}
    unverified: dict[str, str] = {}
    for name in names:
        try:
            data = objects.get(name.key, limits.manifest_max_bytes)
            if Digest.of(data) != name.digest:
                unverified[name.key] = "its content is not the SHA-256 its name promises (altered, truncated or junk)"
                continue
            manifest = parse_statement(parse_bundle(data, limits).payload, limits)
        except FileNotFoundError:
            continue
        except TRANSPORT_ERRORS:
            raise
        except ApplianceError as exc:
            unverified[name.key] = f"{type(exc).__name__}: {exc.problem}"
            continue
        verified[name] = (manifest.digest(), {b.digest for b in required_blobs(manifest)})
    return verified, unverified
