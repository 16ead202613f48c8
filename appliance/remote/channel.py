"""The fleet channel: an operator publishes a release-signed checkpoint; nodes follow the channel.

Owns: ``publish`` (upload a checkpoint signed by a release key under ``<prefix>/channels/<name>/``
— blobs, bundle, then a head signed by the same release key with a sequence one above the
channel's current head; never a generation at or below the current one), ``channel_keys`` (the
keys a channel accepts: the trust store's *release-role* keys of the model, never a device or
role-less key) and ``follow`` (verify the channel head with those keys, refuse a replayed head
(sequence below the one this node saw) or one below the floor, refuse a checkpoint not signed by
a release key, import only the blobs the node lacks into the inactive slot, remember the sequence).

Which keys a channel trusts comes from the node's trust store (key roles, docs/design.md §5.4):
a key may speak for a channel only if the trust store lists it with ``role: release`` and the
store's model. A head or release signed by a trust-store key of another role (a device key) is
``ChannelRoleError`` (71); by an unknown key, ``HeadError`` (49). ``channel_trust`` in
``remote.json`` (from before key roles) is still read, as a pin: each key it lists must be a
release key of the model in the trust store (else ``ChannelRoleError`` naming the migration
command), and the channel then accepts only those keys (docs/design.md §11.6, "Migration").
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

from appliance.errors import ChannelRoleError, HeadError, OlderCheckpointError, UsageError
from appliance.format.remote import HEAD_KEY, HEAD_MAX_BYTES, HEAD_PAYLOAD_TYPE, HeadRecord, parse_envelope
from appliance.format.shown import a_or_an
from appliance.format.statement import pae
from appliance.remote.head import verify_head
from appliance.remote.pull import fetch_head, pull_checkpoint
from appliance.remote.replicate import upload_checkpoint
from appliance.remote.s3 import ObjectStore
from appliance.remote.state import StateDir
from appliance.signing import PublicKey, SigningKey, TrustStore
from appliance.store.discovery import OpenCheckpoint
from appliance.store.store import Store


def _migrate_hint(keyid: str, model: str) -> str:
    return f"appliance trust ROOT role {keyid[:12]} --role release --model {model}"


def channel_keys(trust: TrustStore, model: str, pinned: Sequence[PublicKey] = ()) -> list[PublicKey]:
    """The public keys a channel of ``model`` accepts: release-role keys of ``model`` in ``trust``.

    ``pinned`` (the legacy ``channel_trust``): when given, only those keys, each of which must be
    such a release key; else ``ChannelRoleError`` (71) naming the migration. No key at all: the same.
    """
    release = {k.keyid: k.public for k in trust.keys if k.role == "release" and model in k.models}
    if pinned:
        for key in pinned:
            entry = trust.entry(key.keyid)
            if key.keyid not in release:
                what = "is not in the trust store" if entry is None else f"has role {entry.role_name} there"
                raise ChannelRoleError(
                    f"channel_trust lists key {key.keyid[:12]}, which {what}; a channel accepts only the trust "
                    f"store's release keys of model {model!r}",
                    remedy=(f"`{_migrate_hint(key.keyid, model)}` (a role-less key), or `appliance trust ROOT add "
                            f"KEY.pub --role release --model {model}`; then drop channel_trust from remote.json"),
                )  # fmt: skip
        return [release[k.keyid] for k in pinned]
    if not release:
        raise ChannelRoleError(
            f"the trust store has no release key of model {model!r}, so no channel head can be accepted",
            remedy=f"add the release public key: appliance trust ROOT add KEY.pub --role release --model {model}",
        )
    return list(release.values())


def verify_channel_head(data: bytes, trust: TrustStore, accepted: Sequence[PublicKey], model: str) -> HeadRecord:
    """``verify_head`` against the release keys; a valid signature by a trust-store key of another role
    (a device key) is ``ChannelRoleError`` naming that role, an unknown signer stays ``HeadError``."""
    try:
        return verify_head(data, accepted)
    except HeadError:
        envelope = parse_envelope(data)
        signed = pae(HEAD_PAYLOAD_TYPE, envelope.payload)
        for keyid, sig in envelope.signatures:
            entry = trust.entry(keyid)
            if entry is not None and keyid not in {k.keyid for k in accepted} and entry.public.verify(sig, signed):
                raise ChannelRoleError(
                    f"the channel head is signed by key {keyid[:12]}, {a_or_an(entry.role_name)} key of the trust "
                    f"store; a channel accepts only release keys of model {model!r}"
                ) from None
        raise


def _require_release_signer(trust: TrustStore, model: str, keys: Sequence[SigningKey]) -> None:
    for key in keys:
        entry = trust.entry(key.keyid)
        if entry is None or entry.role != "release" or model not in entry.models:
            what = "is not in the release store's trust store" if entry is None else f"has role {entry.role_name}"
            raise ChannelRoleError(
                f"key {key.keyid[:12]} {what}; only a release key of model {model!r} may publish to a channel",
                remedy=f"publish with the release key; a role-less release key: `{_migrate_hint(key.keyid, model)}`",
            )


def publish(
    store: Store,
    objects: ObjectStore,
    opened: OpenCheckpoint,
    *,
    channel: str,
    keys: Sequence[SigningKey],
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    _require_release_signer(store.trust, store.config.model, keys)
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
    state_dir: StateDir,
    floor: int,
    pinned: Sequence[PublicKey] = (),
) -> dict[str, Any]:
    """One poll: import the channel's newest release into the inactive slot if it is new here.

    Accepted signers: ``channel_keys(store.trust, model, pinned)`` (the node's trust store)."""
    model = store.config.model
    accepted = channel_keys(store.trust, model, pinned)
    seen = state_dir.seen(objects.prefix)
    head = fetch_head(objects, accepted, kind="channel", name=channel, model=model, last_seen=seen, floor=floor,
                      verify=lambda data: verify_channel_head(data, store.trust, accepted, model))  # fmt: skip
    if head.sequence == seen:
        return {"channel": channel, "sequence": head.sequence, "imported": False, "generation": head.generation}
    result = pull_checkpoint(store, objects, head, floor=floor, require_signers=frozenset(k.keyid for k in accepted))
    state_dir.raise_seen(objects.prefix, head.sequence)
    return {"channel": channel, "sequence": head.sequence, "imported": not result.already, **result.to_dict()}
