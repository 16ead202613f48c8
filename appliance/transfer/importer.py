"""Import: commit a checkpoint from a portable layout (USB stick, object store) into this store.

Owns: ``inspect_source`` (every check that needs no bulk data: bundle digest, signature, key
role/lineage and model through ``verify_bundle`` — the entry point the boot path uses —, the
anti-rollback floor, "newer than the node", and that the source holds every blob) and
``import_checkpoint`` (copy each blob verified, then bundle, then commit record, into the slot
that does not hold the newest good checkpoint). The recovery console's USB import and the
remote restore call these two functions.

Order and guarantees (docs/design.md §11.3):
* I1 Nothing is copied before the bundle verified and the decision allowed the import.
* I2 Every blob is hashed as read (from the source, or from the other slot when a verified copy
  is there) and written with the durable-write helper; the directory is synced before the
  bundle is written, the bundle before the commit record (W1/W2 of the commit).
* I3 Before the record, the checkpoint is opened exactly as boot opens it (``open_checkpoint``).
* I4 A cut at any point leaves the previous state committed; re-running resumes: blobs already
  in the target with their SHA-256 are kept, and an already-committed checkpoint is a no-op.
* I5 The protected slot (newest GOOD / newest valid) is never written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from appliance.errors import (
    ApplianceError,
    CheckpointNotFoundError,
    ManifestError,
    PartialCheckpointError,
    StorageError,
    StorageFullError,
)
from appliance.format.commit import CommitRecord
from appliance.format.digest import Digest
from appliance.format.plan import choose_target_slot
from appliance.format.portable import (
    BlobRef,
    BundleName,
    ImportDecision,
    LocalCheckpoint,
    decide_import,
    required_blobs,
)
from appliance.signing import VerifiedManifest, verify_bundle
from appliance.storage import DurableBatch, write_durable
from appliance.store import layout
from appliance.store.discovery import Scan, open_checkpoint, scan
from appliance.store.gc import collect_slot
from appliance.store.lock import writer_lock
from appliance.store.slot import SlotReader
from appliance.store.store import Store
from appliance.transfer.slotblobs import read_slot_blob, slot_blob_path, valid_in_slot
from appliance.transfer.source import (
    LayoutReader,
    describe_missing,
    list_bundles,
    missing_blobs,
    read_blob,
    read_bundle,
)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ImportPlan:
    """What ``inspect_source`` found: a verified checkpoint that may be imported (or already is)."""

    bundle: BundleName
    bundle_bytes: bytes
    verified: VerifiedManifest
    blobs: tuple[BlobRef, ...]
    decision: ImportDecision

    @property
    def generation(self) -> int:
        return self.verified.manifest.generation

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "bundle": self.bundle.key,
            "manifest_digest": self.verified.manifest.digest().hex,
            "model": self.verified.manifest.model,
            "signed_by": list(self.verified.keyids),
            "blobs": len(self.blobs),
            "bytes": self.total_bytes,
            "already_committed": self.decision.already,
        }


@dataclass
class ImportResult:
    slot: str
    generation: int
    manifest_digest: str
    already: bool = False
    blobs: int = 0
    from_source: int = 0
    from_other_slot: int = 0
    kept: int = 0  # already in the target and valid (resume)
    bytes_from_source: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["seconds"] = round(self.seconds, 6)
        return out


def _local_checkpoints(store: Store, found: Scan) -> list[LocalCheckpoint]:
    """Committed checkpoints whose record, bundle and signature verify (the history an import must extend)."""
    out = []
    for outcome in found.records:
        if outcome.record is None:
            continue
        try:
            opened = open_checkpoint(store.storage, outcome.record, store.trust, store.config.model, check_frames=False)
        except (ApplianceError, StorageError):
            continue
        try:
            open_checkpoint(store.storage, outcome.record, store.trust, store.config.model)
            complete = True
        except (ApplianceError, StorageError):
            complete = False
        out.append(LocalCheckpoint(opened.slot, opened.generation, opened.record.manifest_digest, complete))
    return out


def _seen_elsewhere(store: Store, found: Scan, generation: int, bundle_digest: Digest) -> set[int]:
    """Generations named by files here, minus an uncommitted copy of this very bundle (an interrupted import)."""
    if generation not in found.seen:
        return found.seen
    for slot in ("A", "B"):
        reader = SlotReader(store.storage, slot, store.limits)
        if not reader.available():
            continue
        kinds = {kind for gen, kind, _ in reader.checkpoint_names() if gen == generation}
        if "commit" in kinds:
            return found.seen
        if "manifest" in kinds:
            try:
                data = store.storage.read(layout.bundle_path(slot, generation), store.limits.manifest_max_bytes)
            except (ApplianceError, OSError):
                return found.seen
            if Digest.of(data) != bundle_digest:
                return found.seen
    return found.seen - {generation}


def inspect_source(store: Store, source: LayoutReader, *, generation: int | None = None, floor: int = 0) -> ImportPlan:
    """Every check that needs no bulk data, in the order of I1; raises the first refusal."""
    names = [b for b in list_bundles(source) if generation is None or b.generation == generation]
    if not names:
        which = f"generation {generation}" if generation is not None else "any checkpoint"
        raise CheckpointNotFoundError(
            f"the source holds no bundle for {which} (expected bundles/<generation>-<sha256>.json)",
            remedy="pass the directory written by `appliance export` (or list it: ls SRC/bundles)",
        )
    newest = [b for b in names if b.generation == names[0].generation]
    error: ApplianceError | None = None
    for name in newest:  # two different bundles may carry one generation; the first that verifies wins
        try:
            data = read_bundle(source, name, store.limits)
            verified = verify_bundle(data, store.trust, expected_model=store.config.model, limits=store.limits)
            break
        except ApplianceError as exc:
            error = error or exc
    else:
        assert error is not None
        raise error
    manifest = verified.manifest
    if manifest.generation != name.generation:
        raise ManifestError(f"{name.key} holds generation {manifest.generation}, not the one its name says (renamed?)")
    blobs = tuple(required_blobs(manifest))
    plan = ImportPlan(name, data, verified, blobs, _decide(store, verified, data, floor))
    if not plan.decision.already:
        missing = missing_blobs(source, list(blobs))
        if missing:
            raise PartialCheckpointError(
                f"for generation {manifest.generation} the source {describe_missing(missing, len(blobs))}; "
                "nothing was copied"
            )
    return plan


def _decide(store: Store, verified: VerifiedManifest, bundle: bytes, floor: int) -> ImportDecision:
    """The local half of the checks (floor, newer than the node, already here), re-run under the lock."""
    manifest = verified.manifest
    found = scan(store.storage, store.limits)
    local = _local_checkpoints(store, found)
    seen = _seen_elsewhere(store, found, manifest.generation, Digest.of(bundle))
    return decide_import(manifest.generation, manifest.digest(), floor=floor, local=local, seen=seen)


def import_checkpoint(
    store: Store,
    source: LayoutReader,
    *,
    generation: int | None = None,
    floor: int = 0,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    plan: ImportPlan | None = None,
) -> ImportResult:
    """Import the newest (or exactly ``generation``) checkpoint of ``source``.

    ``plan``: the result of ``inspect_source`` the caller already showed the user; its source
    checks are not repeated, the local decision is re-made under the writer lock.
    """
    start = time.perf_counter()
    with writer_lock(store.lock_path):
        if plan is None:
            plan = inspect_source(store, source, generation=generation, floor=floor)
        else:
            plan = replace(plan, decision=_decide(store, plan.verified, plan.bundle_bytes, floor))
        digest = plan.verified.manifest.digest()
        if plan.decision.already:
            assert plan.decision.slot is not None
            return ImportResult(plan.decision.slot, plan.generation, digest.hex, already=True)
        found = scan(store.storage, store.limits)
        good = dict(store.good_provider())
        local = _local_checkpoints(store, found)
        complete = [c for c in local if c.complete]
        newest_slot = max(complete, key=lambda c: c.generation).slot if complete else None
        target = choose_target_slot(found.views(good), newest_slot)  # I5
        result = ImportResult(target, plan.generation, digest.hex, blobs=len(plan.blobs))
        _ensure_dirs(store, target)
        _check_space(store, target, plan)
        _copy_blobs(store, source, target, plan, result, progress=progress)
        record = _write_bundle_and_record(store, target, plan, clock)
        protect = frozenset(g for g in (good.get(target),) if g is not None) | {record.generation}
        collect_slot(store.storage, target, store.trust, store.config.model, keep=store.config.keep, protect=protect)
    result.seconds = time.perf_counter() - start
    return result


def _ensure_dirs(store: Store, slot: str) -> None:
    for path in (layout.frames_dir(slot), layout.checkpoints_dir(slot)):
        if store.storage.listdir(path) is None:
            store.storage.mkdir(path)
            store.storage.fsync_dir(slot)


def _check_space(store: Store, target: str, plan: ImportPlan) -> None:
    reader = SlotReader(store.storage, target, store.limits)
    need = len(plan.bundle_bytes) + sum(
        b.size for b in plan.blobs if reader.storage.size(slot_blob_path(target, b)) != b.size
    )
    free = store.storage.free_bytes(target)
    if free < need:
        raise StorageFullError(f"slot {target} has {free} bytes free; the import needs {need}; nothing was copied")


def _copy_blobs(
    store: Store,
    source: LayoutReader,
    target: str,
    plan: ImportPlan,
    result: ImportResult,
    *,
    progress: Progress | None,
) -> None:
    """I2: each blob from the target (kept), the other slot (verified copy) or the source (verified read)."""
    target_reader = SlotReader(store.storage, target, store.limits)
    other = SlotReader(store.storage, "B" if target == "A" else "A", store.limits)
    batch = DurableBatch(store.storage)
    buf = bytearray(max((b.size for b in plan.blobs), default=0))
    for blob in plan.blobs:
        if valid_in_slot(target_reader, blob):
            result.kept += 1
        else:
            data: bytes | memoryview
            try:
                data = read_slot_blob(other, blob)
                result.from_other_slot += 1
            except (ApplianceError, OSError):
                data = read_blob(source, blob, buf)
                result.from_source += 1
                result.bytes_from_source += blob.size
            batch.add(slot_blob_path(target, blob), data)
            result.bytes_written += blob.size
        if progress is not None:
            progress(blob.size)
    batch.sync()


def _write_bundle_and_record(store: Store, target: str, plan: ImportPlan, clock: Callable[[], float]) -> CommitRecord:
    bundle = plan.bundle_bytes
    write_durable(store.storage, layout.bundle_path(target, plan.generation), bundle)
    record = CommitRecord(
        target,
        plan.generation,
        Digest.of(bundle),
        len(bundle),
        plan.verified.manifest.digest(),
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock())),
    )
    open_checkpoint(store.storage, record, store.trust, store.config.model, store.limits)  # I3: as boot opens it
    write_durable(store.storage, layout.record_path(target, plan.generation), record.to_bytes())  # the commit point
    return record
