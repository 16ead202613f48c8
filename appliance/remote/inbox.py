"""The fleet channel split at the store's write boundary: the network side stages, the store's writer imports.

Owns: ``stage_release`` — one pass of the channel program as ``appliance-channel`` (it can read the
store and the trust store, cannot write the store or read the device key): verify the channel head
with the trust store's release keys, refuse a replayed head or one below the floor, check the
bundle (release signer, model, floor, newer than the node) before any bulk data, download into the
inbox only the blobs neither slot holds verified, then the bundle, then the head (the hand-off
point; every file durable). ``import_staged`` — the persistence watchdog's import of what the inbox
holds, as the store's only writer, trusting nothing the network side decided: the head's signature
by a release key of the model, its binding to this node's channel and model, the floor, the
bundle being the head's and signed by a release key, "newer than the node", no head older than
the newest the writer imported (replay), every blob hashed as read — the import of
``appliance.transfer`` that ``appliance import`` and the USB import use.
``InboxLayout`` is the ``LayoutReader`` it reads: the inbox, then the node's own slots, pinned to
the head's bundle. Rules (names, what to stage and tidy): ``appliance.format.inbox``; design:
docs/design.md §11.6 and §7.2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, ConfigError
from appliance.format.digest import Digest
from appliance.format.inbox import INBOX_HEAD, blobs_to_stage, check_not_replayed, stale_keys
from appliance.format.portable import BLOBS, BUNDLES, BlobRef, blob_fan_dir, blob_key, is_fan_dir
from appliance.format.remote import HEAD_MAX_BYTES, HeadRecord, check_head_fresh
from appliance.remote.channel import channel_keys, verify_channel_head
from appliance.remote.pull import check_against_head, fetch_head_bytes, import_pinned
from appliance.remote.s3 import ObjectStore, RemoteLayout
from appliance.remote.state import StateDir
from appliance.signing import PublicKey
from appliance.storage import DurableBatch, LocalStorage, Storage, write_durable
from appliance.store import layout
from appliance.store.discovery import scan
from appliance.store.slot import SlotReader
from appliance.store.store import Store
from appliance.transfer import ImportResult
from appliance.transfer.slotblobs import valid_in_slot
from appliance.transfer.source import read_blob

SLOTS = ("A", "B")


class InboxLayout:
    """The inbox as an import source: its bundle (pinned to the head's), its blobs, else the node's own
    slots' copies of a blob (the network side stages only what the node lacks). Read verified by the importer."""

    def __init__(self, inbox: LocalStorage, store: Store, pinned: str) -> None:
        self.inbox, self.store, self.pinned = inbox, store, pinned

    def _places(self, path: str) -> list[tuple[Storage, str]]:
        places: list[tuple[Storage, str]] = [(self.inbox, path)]
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == BLOBS:
            try:
                digest = Digest.parse(parts[2], "inbox blob name")
            except ApplianceError:
                return places
            places += [(self.store.storage, layout.frame_path(slot, digest)) for slot in SLOTS]
        return places

    def read(self, path: str, max_size: int) -> bytes:
        return self.inbox.read(path, max_size)

    def read_into(self, path: str, out: memoryview) -> int:
        for storage, where in self._places(path):
            try:
                return storage.read_into(where, out)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(path)

    def size(self, path: str) -> int | None:
        for storage, where in self._places(path):
            size = storage.size(where)
            if size is not None:
                return size
        return None

    def listdir(self, path: str) -> list[str] | None:
        return [self.pinned] if path == BUNDLES else self.inbox.listdir(path)


def open_inbox(path: str | Path, *, create: bool = False) -> LocalStorage | None:
    """The inbox directory as storage; ``None`` when it does not exist (and ``create`` is false)."""
    path = Path(path)
    if create:
        path.mkdir(mode=0o2750, parents=True, exist_ok=True)
    return LocalStorage(path) if path.is_dir() else None


def read_staged_head(inbox: LocalStorage) -> bytes | None:
    """The head the network side handed off, as bytes (unverified); ``None`` when none is staged."""
    try:
        return inbox.read(INBOX_HEAD, HEAD_MAX_BYTES)
    except FileNotFoundError:
        return None


def _release_signers(store: Store, pinned: Sequence[PublicKey]) -> tuple[list[PublicKey], frozenset[str]]:
    accepted = channel_keys(store.trust, store.config.model, pinned)
    return accepted, frozenset(k.keyid for k in accepted)


# --- the network side (appliance-channel) ---------------------------------------------------------


def stage_release(
    store: Store,
    objects: ObjectStore,
    *,
    channel: str,
    state_dir: StateDir,
    inbox: LocalStorage,
    floor: int,
    pinned: Sequence[PublicKey] = (),
) -> dict[str, Any]:
    """One poll: stage the channel's newest release in ``inbox`` for the store's writer if it is new here."""
    model = store.config.model
    accepted, signers = _release_signers(store, pinned)
    seen = state_dir.seen(objects.prefix)
    head, data = fetch_head_bytes(
        objects, accepted, kind="channel", name=channel, model=model, last_seen=seen, floor=floor,
        verify=lambda raw: verify_channel_head(raw, store.trust, accepted, model),
    )  # fmt: skip
    out: dict[str, Any] = {"channel": channel, "sequence": head.sequence, "generation": head.generation,
                           "imported": False, "staged": False}  # fmt: skip
    if head.sequence == seen:  # handed off before: tidy the inbox once the writer has imported it
        return {**out, "tidied": _tidy_if_imported(store, inbox, head)}
    remote = RemoteLayout(objects, pinned=head.bundle.key.rpartition("/")[2])
    plan = check_against_head(store, remote, head, floor=floor, require_signers=signers)
    if plan.decision.already:
        state_dir.raise_seen(objects.prefix, head.sequence)
        return {**out, "already": True, "tidied": _tidy_if_imported(store, inbox, head)}
    todo = blobs_to_stage(plan.blobs, _held_locally(store, plan.blobs))
    staged, nbytes = _download(inbox, remote, todo)
    write_durable(inbox, plan.bundle.key, plan.bundle_bytes)  # after every blob it names is durable
    write_durable(inbox, INBOX_HEAD, data)  # the hand-off point
    _remove(inbox, stale_keys(_inbox_keys(inbox), plan.bundle.key, todo))
    state_dir.raise_seen(objects.prefix, head.sequence)
    return {**out, "staged": True, "blobs": len(plan.blobs), "downloaded": staged, "bytes_downloaded": nbytes,
            "requests": objects.requests}  # fmt: skip


def _held_locally(store: Store, blobs: Sequence[BlobRef]) -> set[Digest]:
    """Blobs one of the node's slots holds with their size and SHA-256 (the import copies those locally)."""
    readers = [SlotReader(store.storage, slot, store.limits) for slot in SLOTS]
    return {b.digest for b in blobs if any(valid_in_slot(r, b) for r in readers)}


def _download(inbox: LocalStorage, remote: RemoteLayout, blobs: Sequence[BlobRef]) -> tuple[int, int]:
    """Each blob hashed as read from the bucket, written durably; one already in the inbox verified is kept."""
    _ensure_dir(inbox, BUNDLES)
    _ensure_dir(inbox, BLOBS)
    batch = DurableBatch(inbox)
    count = nbytes = 0
    for blob in blobs:
        key = blob_key(blob.digest)
        if _present(inbox, key, blob):
            continue
        data = read_blob(remote, blob)
        _ensure_dir(inbox, blob_fan_dir(blob.digest))
        batch.add(key, data)
        count, nbytes = count + 1, nbytes + blob.size
    batch.sync()
    return count, nbytes


def _present(inbox: LocalStorage, key: str, blob: BlobRef) -> bool:
    try:
        return inbox.size(key) == blob.size and Digest.of(inbox.read(key, blob.size)) == blob.digest
    except (ApplianceError, OSError):
        return False


def _ensure_dir(inbox: LocalStorage, path: str) -> None:
    if inbox.listdir(path) is None:
        inbox.mkdir(path)
        inbox.fsync_dir(path.rpartition("/")[0])


def _inbox_keys(inbox: LocalStorage) -> list[str]:
    keys = [f"{BUNDLES}/{n}" for n in inbox.listdir(BUNDLES) or []]
    for fan in inbox.listdir(BLOBS) or []:
        if is_fan_dir(fan):
            keys += [f"{BLOBS}/{fan}/{n}" for n in inbox.listdir(f"{BLOBS}/{fan}") or []]
    return keys


def _remove(inbox: LocalStorage, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            inbox.unlink(key)
        except FileNotFoundError:
            continue


def _tidy_if_imported(store: Store, inbox: LocalStorage, head: HeadRecord) -> bool:
    """Once the store commits the staged checkpoint, the inbox is emptied: head first, then bundles, blobs."""
    found = scan(store.storage, store.limits)
    if not any(o.record is not None and o.record.generation == head.generation
               and o.record.manifest_digest == head.manifest_digest for o in found.records):  # fmt: skip
        return False
    if read_staged_head(inbox) is not None:
        inbox.unlink(INBOX_HEAD)
        inbox.fsync_dir("")
    _remove(inbox, stale_keys(_inbox_keys(inbox), None, ()))
    return True


# --- the store's writer (appliance-persist) --------------------------------------------------------


def import_staged(
    store: Store,
    inbox: LocalStorage,
    data: bytes,
    *,
    channel: str,
    floor: int,
    last_seen: int,
    pinned: Sequence[PublicKey] = (),
    progress: Callable[[int], None] | None = None,
) -> tuple[HeadRecord, ImportResult]:
    """Import the release the inbox's head (``data``) names, re-checking everything (the inbox is untrusted).

    ``last_seen``: the newest head sequence this store's writer imported from the channel; an older head is a
    replay (``HeadError``), refused before any bulk data is read."""
    if not channel:
        raise ConfigError("a release is staged in the channel inbox but remote.json names no channel",
                          remedy="set channel in remote.json beside node.json, or empty the inbox")  # fmt: skip
    model = store.config.model
    accepted, signers = _release_signers(store, pinned)
    head = verify_channel_head(data, store.trust, accepted, model)
    check_head_fresh(head, kind="channel", name=channel, model=model, last_seen=0, floor=floor)
    check_not_replayed(head.sequence, head.generation, last_seen, channel)
    source = InboxLayout(inbox, store, pinned=head.bundle.key.rpartition("/")[2])
    return head, import_pinned(store, source, head, floor=floor, progress=progress, require_signers=signers)
