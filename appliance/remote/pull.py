"""Pulling a checkpoint from object storage: verified head -> verified bundle -> missing blobs only.

Owns: ``fetch_head`` (signature against the accepted keys, then binding and anti-replay through
``check_head_fresh``) and ``pull_checkpoint`` (the import of ``appliance.transfer`` over a
``RemoteLayout`` pinned to the head's bundle: the same checks before bulk data, blobs hashed as
read, the other local slot's verified copies used before the network). Used by
``appliance remote pull``, boot's restore from the second site and the fleet channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from appliance.errors import ChannelRoleError, CheckpointNotFoundError, HeadError
from appliance.format.remote import HEAD_KEY, HEAD_MAX_BYTES, HeadRecord, check_head_fresh
from appliance.remote.head import verify_head
from appliance.remote.s3 import ObjectStore, RemoteLayout
from appliance.signing import PublicKey
from appliance.store.store import Store
from appliance.transfer import ImportResult, import_checkpoint, inspect_source

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
    try:
        data = objects.get(HEAD_KEY, HEAD_MAX_BYTES)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"no head record at {objects.key(HEAD_KEY)}: nothing was replicated or published there",
            remedy="check remote.json's prefix and device/channel name",
        ) from exc
    head = verify(data) if verify is not None else verify_head(data, accepted)
    check_head_fresh(head, kind=kind, name=name, model=model, last_seen=last_seen, floor=floor)
    return head


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
    plan = inspect_source(store, layout, generation=head.generation, floor=floor)
    if plan.verified.manifest.digest() != head.manifest_digest:
        raise HeadError("the head names a manifest its bundle does not hold (head and bundle swapped?)")
    if require_signers is not None and not set(plan.verified.keyids) & require_signers:
        raise ChannelRoleError(
            f"the channel's checkpoint (generation {head.generation}) is not signed by a release key of the "
            "channel (the trust store's release keys of the model)"
        )
    return import_checkpoint(store, layout, generation=head.generation, floor=floor, progress=progress, plan=plan)
