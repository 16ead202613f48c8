"""The fleet channel: an operator publishes a release-signed checkpoint; nodes follow the channel.

Owns: ``publish`` (upload a checkpoint signed by a release key under ``<prefix>/channels/<name>/``
— blobs, bundle, then a head signed by the same release key with a sequence one above the
channel's current head; never a generation at or below the current one) and ``follow`` (verify
the channel head with the release keys of ``channel_trust``, refuse a replayed head (sequence
below the one this node saw) or one below the floor, refuse a checkpoint not signed by a release
key, import only the blobs the node lacks into the inactive slot, remember the sequence).
Booting the imported checkpoint is ``appliance boot``'s walk: it is served only after its canary
passes; a failed canary marks it BAD, the node falls back to its previous checkpoint and the
events (``slot.marked_bad``, ``fallback.taken``) report it (docs/design.md §11.6).

Generations: a release must be newer than what nodes hold, so publishers number releases above
any node's own persisted generations (``appliance publish`` reports the node-side rule; the
operator's release store commits with a floor such as a date-based number).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from appliance.errors import OlderCheckpointError, UsageError
from appliance.format.remote import HEAD_KEY, HEAD_MAX_BYTES
from appliance.remote.head import verify_head
from appliance.remote.pull import fetch_head, pull_checkpoint
from appliance.remote.replicate import upload_checkpoint
from appliance.remote.s3 import ObjectStore
from appliance.remote.state import StateDir
from appliance.signing import PublicKey, SigningKey
from appliance.store.discovery import OpenCheckpoint
from appliance.store.store import Store


def publish(
    store: Store,
    objects: ObjectStore,
    opened: OpenCheckpoint,
    *,
    channel: str,
    keys: Sequence[SigningKey],
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    release_ids = {k.keyid for k in keys}
    if not release_ids & set(opened.verified.keyids):
        raise UsageError(
            f"generation {opened.generation} is not signed by the release key given; a channel carries only "
            "release-signed checkpoints",
            remedy="commit the release with the release key, then publish it",
        )
    previous = None
    try:
        previous = verify_head(objects.get(HEAD_KEY, HEAD_MAX_BYTES), [k.public for k in keys])
    except FileNotFoundError:
        previous = None
    if previous is not None and previous.manifest_digest == opened.record.manifest_digest:
        return {"channel": channel, "generation": opened.generation, "sequence": previous.sequence, "already": True}
    if previous is not None and opened.generation <= previous.generation:
        raise OlderCheckpointError(
            f"channel {channel} already carries generation {previous.generation}; generation {opened.generation} "
            "would roll its followers back",
            remedy="publish a newer release (commit it above the channel's generation)",
        )
    sequence = previous.sequence + 1 if previous is not None else 1
    report = upload_checkpoint(
        store, objects, opened, kind="channel", name=channel, sequence=sequence, keys=keys, clock=clock
    )
    return {"channel": channel, "sequence": sequence, "already": False, **report.to_dict()}


def follow(
    store: Store,
    objects: ObjectStore,
    *,
    channel: str,
    accepted: Sequence[PublicKey],
    state_dir: StateDir,
    floor: int,
) -> dict[str, Any]:
    """One poll: import the channel's newest release into the inactive slot if it is new here."""
    seen = state_dir.seen(objects.prefix)
    head = fetch_head(objects, accepted, kind="channel", name=channel, model=store.config.model,
                      last_seen=seen, floor=floor)  # fmt: skip
    if head.sequence == seen:
        return {"channel": channel, "sequence": head.sequence, "imported": False, "generation": head.generation}
    result = pull_checkpoint(store, objects, head, floor=floor, require_signers=frozenset(k.keyid for k in accepted))
    state_dir.raise_seen(objects.prefix, head.sequence)
    return {"channel": channel, "sequence": head.sequence, "imported": not result.already, **result.to_dict()}
