"""Pulling a checkpoint from object storage: verified head -> verified bundle -> missing blobs only.

Owns: ``fetch_head`` (signature against the accepted keys, then binding and anti-replay through
``check_head_fresh``), ``check_against_head`` (the import plan of a layout pinned to the head's
bundle: every check before bulk data, the bundle is the one the head names, optionally signed by one
of the given keys) and ``pull_checkpoint`` / ``import_pinned`` (the import of ``appliance.transfer``
over such a layout — a ``RemoteLayout`` or the fleet channel's inbox —: blobs hashed as read, the
other local slot's verified copies used before the source). Used by ``appliance remote pull``,
boot's restore from the second site and both sides of the fleet channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from appliance.errors import ChannelRoleError, CheckpointNotFoundError, HeadError
from appliance.format.remote import HEAD_KEY, HEAD_MAX_BYTES, HeadRecord, check_head_fresh
from appliance.remote.head import verify_head
from appliance.remote.s3 import ObjectStore, RemoteLayout
from appliance.signing import PublicKey
from appliance.store.store import Store
from appliance.transfer import ImportPlan, ImportResult, LayoutReader, import_checkpoint, inspect_source

Progress = Callable[[int], None]


def fetch_head(
    objects: ObjectStore,
    accepted: Sequence[PublicKey],
    *,
    kind: str,
    name: str,
    model: str,
    last_seen: int,
    floor: int,
    verify: Callable[[bytes], HeadRecord] | None = None,
) -> HeadRecord:
    """The verified, fresh head; ``verify`` replaces the plain signature check (the channel's role check)."""
    return fetch_head_bytes(objects, accepted, kind=kind, name=name, model=model, last_seen=last_seen, floor=floor,
                            verify=verify)[0]  # fmt: skip


def fetch_head_bytes(
    objects: ObjectStore,
    accepted: Sequence[PublicKey],
    *,
    kind: str,
    name: str,
    model: str,
    last_seen: int,
    floor: int,
    verify: Callable[[bytes], HeadRecord] | None = None,
) -> tuple[HeadRecord, bytes]:
    """``fetch_head`` and the exact signed bytes it verified (the channel hands them to the store's writer)."""
    try:
        data = objects.get(HEAD_KEY, HEAD_MAX_BYTES)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"no head record at {objects.key(HEAD_KEY)}: nothing was replicated or published there",
            remedy="check remote.json's prefix and device/channel name",
        ) from exc
    head = verify(data) if verify is not None else verify_head(data, accepted)
    check_head_fresh(head, kind=kind, name=name, model=model, last_seen=last_seen, floor=floor)
    return head, data


def check_against_head(
    store: Store, layout: LayoutReader, head: HeadRecord, *, floor: int, require_signers: frozenset[str] | None = None
) -> ImportPlan:
    """The import plan of ``layout`` (pinned to the head's bundle), only if its bundle is the one the head names
    and, with ``require_signers``, signed by one of those key ids; raises before any bulk data."""
    plan = inspect_source(store, layout, generation=head.generation, floor=floor)
    if plan.verified.manifest.digest() != head.manifest_digest:
        raise HeadError("the head names a manifest its bundle does not hold (head and bundle swapped?)")
    if require_signers is not None and not set(plan.verified.keyids) & require_signers:
        raise ChannelRoleError(
            f"the channel's checkpoint (generation {head.generation}) is not signed by a release key of the "
            "channel (the trust store's release keys of the model)"
        )
    return plan


def pull_checkpoint(
    store: Store,
    objects: ObjectStore,
    head: HeadRecord,
    *,
    floor: int,
    progress: Progress | None = None,
    require_signers: frozenset[str] | None = None,
) -> ImportResult:
    """Import the head's checkpoint; ``require_signers``: key ids one of which must have signed it (a channel's
    release keys: a device-signed checkpoint is refused there), checked before any bulk data."""
    layout = RemoteLayout(objects, pinned=head.bundle.key.rpartition("/")[2])
    return import_pinned(store, layout, head, floor=floor, progress=progress, require_signers=require_signers)


def import_pinned(
    store: Store,
    layout: LayoutReader,
    head: HeadRecord,
    *,
    floor: int,
    progress: Progress | None = None,
    require_signers: frozenset[str] | None = None,
) -> ImportResult:
    """``check_against_head``, then the import of ``appliance.transfer`` (its local decision re-made under the lock)."""
    plan = check_against_head(store, layout, head, floor=floor, require_signers=require_signers)
    return import_checkpoint(store, layout, generation=head.generation, floor=floor, progress=progress, plan=plan)
