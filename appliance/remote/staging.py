"""The fleet channel's network side with an inbox: stage a release, keep a handed-off staging whole.

Owns: ``stage_release`` — one pass of the channel program as ``appliance-channel`` (it can read the
store and the trust store, cannot write the store or read the device key): verify the channel head
with the trust store's release keys, refuse a replayed head or one below the floor, check the
bundle (release signer, model, floor, newer than the node) before any bulk data, download into the
inbox only the blobs neither slot holds verified, then the bundle, then the head (the hand-off
point; every file durable), then raise the heads-seen memory. A head handed off before (its
sequence is the one remembered) is *resumed* until the store holds it: a staged file that is
missing, cut short or altered (blob, bundle, head, or the whole inbox emptied) is downloaded or
written again and the head re-written (a new hand-off the watchdog tries at once); a staging that
is whole is left alone. The heads-seen memory is never lowered. Once the store holds the
checkpoint (or holds a newer one, so it will never import this), the inbox is emptied.
``VerifiedStaging`` (in memory, ``--watch``) spares a pass the hashing while nothing changed.
The import side: ``appliance.remote.inbox``; rules: ``appliance.format.inbox``; design:
docs/design.md §11.6.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from appliance.errors import ApplianceError, OlderCheckpointError, RollbackError
from appliance.format.digest import Digest
from appliance.format.inbox import INBOX_HEAD, VerifiedStaging, blobs_to_stage, stale_keys
from appliance.format.portable import BLOBS, BUNDLES, BlobRef, blob_fan_dir, blob_key, is_fan_dir
from appliance.format.remote import HeadRecord
from appliance.remote.channel import verify_channel_head
from appliance.remote.inbox import release_signers
from appliance.remote.pull import check_against_head, fetch_head_bytes
from appliance.remote.s3 import ObjectStore, RemoteLayout
from appliance.remote.state import StateDir
from appliance.signing import PublicKey
from appliance.storage import DurableBatch, LocalStorage, write_durable
from appliance.store.discovery import Scan, scan
from appliance.store.slot import SlotReader
from appliance.store.store import Store
from appliance.transfer.importer import ImportPlan
from appliance.transfer.slotblobs import valid_in_slot
from appliance.transfer.source import read_blob

SLOTS = ("A", "B")


def stage_release(
    store: Store,
    objects: ObjectStore,
    *,
    channel: str,
    state_dir: StateDir,
    inbox: LocalStorage,
    floor: int,
    pinned: Sequence[PublicKey] = (),
    memo: VerifiedStaging | None = None,
) -> dict[str, Any]:
    """One poll: stage the channel's newest release in ``inbox`` for the store's writer if it is new here, or
    make the staging of the head handed off before whole again. ``memo``: what the previous pass of this
    process found whole (``None``: verify everything, as a one-shot ``channel follow`` does)."""
    model = store.config.model
    accepted, signers = release_signers(store, pinned)
    seen = state_dir.seen(objects.prefix)
    head, data = fetch_head_bytes(
        objects, accepted, kind="channel", name=channel, model=model, last_seen=seen, floor=floor,
        verify=lambda raw: verify_channel_head(raw, store.trust, accepted, model),
    )  # fmt: skip
    out: dict[str, Any] = {"channel": channel, "sequence": head.sequence, "generation": head.generation,
                           "imported": False, "staged": False}  # fmt: skip
    remote = RemoteLayout(objects, pinned=head.bundle.key.rpartition("/")[2])
    if head.sequence == seen:  # handed off before: resume it until the store holds it, then tidy
        return {**out, **_resume(store, remote, inbox, head, data, floor=floor, signers=signers, memo=memo)}
    plan = check_against_head(store, remote, head, floor=floor, require_signers=signers)
    if plan.decision.already:
        state_dir.raise_seen(objects.prefix, head.sequence)
        return {**out, "already": True, "tidied": _tidy_if_imported(store, inbox, head)}
    staged = _stage(store, remote, inbox, plan, data, handoff=True)
    state_dir.raise_seen(objects.prefix, head.sequence)
    if memo is not None:
        memo.remember(_seal(scan(store.storage, store.limits), inbox), time.monotonic())
    return {**out, "staged": True, **staged, "requests": objects.requests}


def _resume(
    store: Store,
    remote: RemoteLayout,
    inbox: LocalStorage,
    head: HeadRecord,
    data: bytes,
    *,
    floor: int,
    signers: frozenset[str],
    memo: VerifiedStaging | None,
) -> dict[str, Any]:
    """The head was handed off before: tidy once imported, else verify the staging and repair what is not whole."""
    found = scan(store.storage, store.limits)
    if _holds(found, head):
        return {"tidied": _tidy(inbox)}
    if memo is not None and memo.holds(_seal(found, inbox), time.monotonic()):
        return {"tidied": False, "waiting": True}  # verified whole before, nothing changed since
    try:
        plan = check_against_head(store, remote, head, floor=floor, require_signers=signers)
        outcome = _restage(store, remote, inbox, plan, data) if not plan.decision.already else {"tidied": _tidy(inbox)}
    except (OlderCheckpointError, RollbackError) as exc:  # the store will never import it: nothing to hand off
        outcome = {"tidied": _tidy(inbox), "superseded": exc.problem}
    if memo is not None:  # this program never writes the store: the scan above still describes it (or an older one)
        memo.remember(_seal(found, inbox), time.monotonic())
    return outcome


def _restage(store: Store, remote: RemoteLayout, inbox: LocalStorage, plan: ImportPlan, data: bytes) -> dict[str, Any]:
    staged = _stage(store, remote, inbox, plan, data, handoff=False)
    if not staged["repaired"]:
        return {"tidied": False, "waiting": True}
    return {"staged": True, "restaged": True, **staged, "requests": remote.store.requests}


def _stage(
    store: Store, remote: RemoteLayout, inbox: LocalStorage, plan: ImportPlan, data: bytes, *, handoff: bool
) -> dict[str, Any]:
    """Blobs the node lacks (each kept when present and verified), the bundle, then the head (the hand-off
    point: written when ``handoff`` or when anything before it had to be written again), stale files removed."""
    todo = blobs_to_stage(plan.blobs, _held_locally(store, plan.blobs))
    count, nbytes = _download(inbox, remote, todo)
    bundle = _write_unless_held(inbox, plan.bundle.key, plan.bundle_bytes, force=False)
    written = _write_unless_held(inbox, INBOX_HEAD, data, force=handoff or count > 0 or bundle)
    _remove(inbox, stale_keys(_inbox_keys(inbox), plan.bundle.key, todo))
    repaired = [f"{count} blob{'s' if count != 1 else ''}"] if count else []
    repaired += ["the bundle"] * bundle + [INBOX_HEAD] * written
    return {"blobs": len(plan.blobs), "downloaded": count, "bytes_downloaded": nbytes,
            "repaired": [] if handoff else repaired}  # fmt: skip


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


def _write_unless_held(inbox: LocalStorage, key: str, data: bytes, *, force: bool) -> bool:
    """Write ``key`` durably unless it holds exactly ``data`` already (``force``: always); whether it wrote."""
    if not force:
        try:
            if inbox.read(key, len(data)) == data:
                return False
        except (ApplianceError, OSError):
            pass  # missing, longer, or not a regular file: written again
    write_durable(inbox, key, data)
    return True


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


def _seal(found: Scan, inbox: LocalStorage) -> tuple[object, ...]:
    """What a verified staging looked like: each staged file's identity (``lstat``: inode, size, mtime, ctime)
    and the store's commit records (the slots the staging relies on for the blobs it did not download)."""
    files = []
    for key in (INBOX_HEAD, *_inbox_keys(inbox)):
        try:
            st = os.lstat(inbox.root / key)
        except OSError:
            continue
        files.append((key, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    records = sorted((r.slot, r.generation, r.record.manifest_digest.hex if r.record else "") for r in found.records)
    return tuple(files), tuple(records)


def _remove(inbox: LocalStorage, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            inbox.unlink(key)
        except FileNotFoundError:
            continue


def _holds(found: Scan, head: HeadRecord) -> bool:
    """The store committed the head's checkpoint (its generation and manifest) in either slot."""
    return any(o.record is not None and o.record.generation == head.generation
               and o.record.manifest_digest == head.manifest_digest for o in found.records)  # fmt: skip


def _tidy_if_imported(store: Store, inbox: LocalStorage, head: HeadRecord) -> bool:
    return _tidy(inbox) if _holds(scan(store.storage, store.limits), head) else False


def _tidy(inbox: LocalStorage) -> bool:
    """Empty the inbox: the head first (no hand-off is left pointing at files being removed), bundles, blobs."""
    try:
        inbox.unlink(INBOX_HEAD)
        inbox.fsync_dir("")
    except FileNotFoundError:
        pass
    _remove(inbox, stale_keys(_inbox_keys(inbox), None, ()))
    return True
