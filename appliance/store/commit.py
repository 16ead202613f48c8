"""The commit: one write order, into the slot that does not hold the newest good checkpoint.

Owns: planning a commit (target slot, generation, parent), driving the encoder, and the write
order — frames -> (directory fsync) -> signed bundle -> commit record — each file through the
durable-write helper. Does not own encoding decisions (``encode``) or retention (``gc``).

Invariants (docs/design.md §6):
* W1 Nothing in the target slot is referenced before it is durable: frames and their
  directory are synced before the bundle is written; the bundle before the record.
* W2 The commit record is the commit point; a crash at any earlier point leaves the previous
  state committed and the new one absent.
* W3 The target slot is self-contained when the record is written: every frame the manifest
  names (bases included) is in the slot and was hashed there or copied there verified.
* W4 On any error nothing is acknowledged; files this commit created are removed (best
  effort) and committed checkpoints are never touched.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from appliance.crypto import FrameCipher
from appliance.errors import (
    ApplianceError,
    FrameMissingError,
    ManifestError,
    NoValidCheckpointError,
    RevokedKeyError,
    StorageError,
    UntrustedKeyError,
    UsageError,
)
from appliance.format.canary import METADATA_KEY as CANARY_KEY
from appliance.format.canary import Canary
from appliance.format.commit import CommitRecord
from appliance.format.crypto import may_share_frames
from appliance.format.digest import Digest
from appliance.format.lineage import Lineage
from appliance.format.manifest import ENCRYPTED_VERSION, FORMAT_VERSION, FrameRef, Manifest, TensorEntry
from appliance.format.plan import choose_target_slot, first_unused_generation
from appliance.format.provenance import Provenance
from appliance.format.statement import parse_bundle, parse_statement
from appliance.format.validate import check_metadata as check_metadata_rules
from appliance.format.validate import check_tensor_count, check_unique
from appliance.limits import DEFAULT_LIMITS
from appliance.signing import Authorization, SigningKey, TrustStore, authorize, lineage_for_commit, sign_manifest
from appliance.storage import DurableBatch, Storage, write_durable
from appliance.store import layout
from appliance.store.assets import AssetJobs, DirectoryParts
from appliance.store.discovery import OpenCheckpoint, Scan, open_checkpoint, scan, select
from appliance.store.encode import (
    EncodedFrame,
    EncodeOptions,
    FrameEncoder,
    FrameSupply,
    TensorSource,
    check_source,
    encode_all,
    tensor_jobs,
)
from appliance.store.lastcommit import LastCommit, Recording
from appliance.store.reread import check_second_read
from appliance.store.slot import SlotReader

Progress = Callable[[int], None]


@dataclass
class CommitResult:
    slot: str
    generation: int
    manifest_digest: Digest
    parent_generation: int | None
    raw_bytes: int = 0
    stored_bytes: int = 0  # what the checkpoint occupies in its slot
    written_bytes: int = 0  # new bytes this commit wrote (frames + copies + bundle + record)
    encoded_bytes: int = 0  # of which newly encoded frames (full or delta)
    copied_bytes: int = 0  # of which verified frames copied from the other slot
    frames: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"reused": 0, "delta": 0, "full": 0, "copied": 0})
    seconds: float = 0.0
    authorization: Authorization | None = None  # signer role and release base of the new checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {
            **(self.authorization.to_dict() if self.authorization else {}),
            "slot": self.slot,
            "generation": self.generation,
            "manifest_digest": self.manifest_digest.hex,
            "parent_generation": self.parent_generation,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "written_bytes": self.written_bytes,
            "encoded_bytes": self.encoded_bytes,
            "copied_bytes": self.copied_bytes,
            "frames": self.frames,
            "frame_kinds": dict(self.counts),
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True)
class CommitRequest:
    model: str
    options: EncodeOptions
    keys: tuple[SigningKey, ...]
    metadata: Mapping[str, Any]
    floor: int = 0
    good: Mapping[str, int | None] = field(default_factory=dict)  # slot -> GOOD generation
    clock: Callable[[], float] = time.time
    directory: DirectoryParts = field(default_factory=DirectoryParts)  # assets, shards (model directories)
    provenance: Provenance | None = None  # a vendor signature verified on import (manifest v2)
    allow_empty: bool = False  # a checkpoint without tensors (metadata only) is refused unless asked for
    reread: bool = False  # read file-backed sources again and compare with the frames (store.reread)
    cipher: FrameCipher | None = None  # seal every frame under this data key (manifest v3, design §14)
    # The lineage base instead of the parent (bundle, authorization, manifest): an import that
    # re-seals a release-signed checkpoint descends from it, not from the local parent (§14.10).
    lineage_base: tuple[bytes, Authorization, Manifest] | None = None


def check_signing_keys(keys: Iterable[SigningKey], trust: TrustStore) -> None:
    """Refuse up front to sign with a key that could never boot the result."""
    for key in keys:
        if key.keyid in trust.revoked:
            raise RevokedKeyError(f"signing key {key.keyid[:12]} is revoked in this store's trust store")
        if trust.get(key.keyid) is None:
            raise UntrustedKeyError(
                f"signing key {key.keyid[:12]} is not in this store's trust store; its checkpoints would never boot"
            )


def check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's metadata rules (``appliance.format.validate``), refused as input (exit 10)."""
    try:
        check_metadata_rules(metadata, UsageError, DEFAULT_LIMITS)
    except UsageError as exc:
        raise UsageError(
            exc.problem,
            remedy=exc.remedy
            if exc.remedy != UsageError.remedy  # a rule that says its own fix
            else "pass a JSON object (API argument `metadata`, CLI --meta) within the caps of appliance/limits.py; "
            "NaN and infinities are not JSON; store large state as tensors (appliance.training flattens it)",
        ) from exc
    try:  # boot's health gate reads it the same way: a canary no boot could use is refused now, not there
        Canary.from_metadata(dict(metadata))
    except ManifestError as exc:
        raise UsageError(
            f"metadata key {CANARY_KEY!r} is not a valid canary: {exc.problem}",
            remedy="give the canary an `input` and either `expected` (+ atol/rtol) or `output_sha256` "
            "(docs/boot.md); `appliance seed` and exports record one from the model itself",
        ) from exc
    return dict(metadata)


def check_sources(sources: list[TensorSource], *, allow_empty: bool) -> None:
    """Every structural rule on the tensor table, before a byte is written (input errors, never 34)."""
    if not allow_empty and not any(math.prod(s.shape) for s in sources):
        raise UsageError(
            "the checkpoint would hold no tensors" if not sources else
            f"the checkpoint would hold no tensor data: all {len(sources)} tensor(s) have zero elements",
            remedy="commit the model's tensors; pass allow_empty=True (--allow-empty) only to store metadata alone",
        )  # fmt: skip
    check_tensor_count(len(sources), UsageError)
    check_unique([s.name for s in sources], UsageError)
    for src in sources:
        check_source(src)


def _recheck_sources(sources: list[TensorSource], request: CommitRequest, manifest: Manifest) -> None:
    """Every file-backed source and asset is still the file that was read (``SourceChangedError`` if not);
    commits from files also read the tensors again (writes through a shared mapping leave no identity trace)."""
    seen: set[Callable[[], None]] = set()
    for recheck in chain((s.recheck for s in sources), (a.recheck for a in request.directory.assets)):
        if recheck is not None and recheck not in seen:
            seen.add(recheck)
            recheck()
    if request.reread or request.directory.signed_shards:
        check_second_read(sources, manifest, request.cipher, request.directory.signed_shards)


def _reader_accepts(bundle: bytes) -> None:
    """The bundle parses with the reader's own code (defence in depth: never commit what no reader takes)."""
    try:
        parse_statement(parse_bundle(bundle).payload)
    except ApplianceError as exc:
        raise UsageError(
            f"the checkpoint would not be readable: {exc.problem}",
            remedy="reduce the metadata or the tensor table below the caps in appliance/limits.py",
        ) from exc


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _find_parent(storage: Storage, trust: TrustStore, model: str, found: Any, floor: int) -> OpenCheckpoint | None:
    try:
        return select(storage, trust, model, floor=floor, found=found).opened
    except NoValidCheckpointError:
        return None


def _counted_generations(
    storage: Storage, trust: TrustStore, model: str, found: Scan, parent: OpenCheckpoint | None
) -> list[int]:
    """Generations a new commit must go above: only checkpoints whose record, bundle and signature verify.

    An unverified name or record (junk, a forgery, a key since revoked) must not order the
    history: a planted ``09223372036854775807.commit.json`` would otherwise block every later
    commit (TUF's fast-forward attack); it is only stepped over (``first_unused_generation``).
    Checkpoints failing only on frames still count.
    """
    counted = [parent.generation if parent else 0]
    for outcome in found.records:
        if outcome.record is None or outcome.generation <= counted[0]:
            continue
        try:
            open_checkpoint(storage, outcome.record, trust, model, check_frames=False)
        except (ApplianceError, StorageError):
            continue
        counted.append(outcome.generation)
    return counted


def _ensure_dirs(storage: Storage, slot: str) -> None:
    """Create the slot's directories (R2: a new directory entry is synced in its parent)."""
    for path in (layout.frames_dir(slot), layout.checkpoints_dir(slot)):
        if storage.listdir(path) is None:
            storage.mkdir(path)
            storage.fsync_dir(slot)


class _FramePlacer:
    """Writes the frames the encoder produced (new frames and verified copies) into the target.

    Decisions (dedupe, what exists, what this commit created) are made on the calling thread
    in frame order; the durable writes themselves run on ``WRITERS`` threads with at most
    ``MAX_PENDING`` frames in flight, because fsyncs of different files overlap on the
    device (measured here: 0.29 GB/s one at a time, 0.6 GB/s two at a time).
    ``finish()`` waits for every write and re-raises the first failure.
    """

    WRITERS = 2
    MAX_PENDING = 4

    def __init__(self, target: SlotReader, batch: DurableBatch) -> None:
        self.target = target
        self.batch = batch
        self.placed: set[Digest] = set()
        self.created: list[str] = []
        self.written_bytes = 0
        self.copied_bytes = 0
        self.copied = 0
        self._pool = ThreadPoolExecutor(max_workers=self.WRITERS, thread_name_prefix="commit-write")
        self._pending: deque[Future[None]] = deque()

    def place(self, encoded: EncodedFrame) -> None:
        for ref, data in encoded.extra:
            self._copy(ref, data)
        if encoded.stored is not None and encoded.ref.digest not in self.placed:
            if encoded.kind == "reused":
                self._copy(encoded.ref, encoded.stored)
            else:
                size = self.target.frame_size(encoded.ref.digest)
                if not self._present_and_valid(encoded.ref, size):
                    self._write(encoded.ref, encoded.stored, existed=size is not None)
        self.placed.add(encoded.ref.digest)

    def _copy(self, ref: FrameRef, data: bytes | bytearray) -> None:
        written = self._write(ref, data)
        if written:
            self.copied += 1
            self.copied_bytes += written

    def finish(self) -> None:
        """Wait for every write; the first error is raised after all writes have stopped."""
        error: BaseException | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as exc:
                error = error or exc
        self._pool.shutdown(wait=True)
        if error is not None:
            raise error

    def _write(self, ref: FrameRef, data: bytes | bytearray, existed: bool | None = None) -> int:
        if ref.digest in self.placed:
            return 0
        path = layout.frame_path(self.target.slot, ref.digest)
        if existed is None:
            existed = self.target.frame_size(ref.digest) is not None
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self.batch.add, path, memoryview(data)))
        if not existed:
            self.created.append(path)
        self.written_bytes += len(data)
        self.placed.add(ref.digest)
        return len(data)

    def _present_and_valid(self, ref: FrameRef, size: int | None) -> bool:
        if size != ref.size:
            return False
        try:
            self.target.read_frame(ref)
        except ApplianceError:
            return False  # rotten copy: rewritten (the rename replaces it atomically)
        return True


def commit(
    storage: Storage,
    trust: TrustStore,
    sources: Iterable[TensorSource],
    request: CommitRequest,
    progress: Progress | None = None,
    *,
    last: LastCommit | None = None,
) -> CommitResult:
    """Commit ``sources`` as the next generation; ``last``: what this process committed before (``lastcommit``)."""
    start = time.perf_counter()
    check_signing_keys(request.keys, trust)
    metadata = check_metadata(request.metadata)
    sources = list(sources)  # names, dtypes and shapes only: the bytes load lazily, one tensor at a time
    check_sources(sources, allow_empty=request.allow_empty)
    found = scan(storage)
    parent = _find_parent(storage, trust, request.model, found, request.floor)
    target = choose_target_slot(found.views(dict(request.good)), parent.slot if parent else None)
    newest_valid = max(_counted_generations(storage, trust, request.model, found, parent))
    generation = first_unused_generation(newest_valid, found.seen, request.floor)
    _ensure_dirs(storage, target)
    batch = DurableBatch(storage)
    target_reader = SlotReader(storage, target)
    last = last or LastCommit(limit=0)  # remembers nothing
    encoder, recording = _encoder(storage, request, parent, target_reader, last)
    placer = _FramePlacer(target_reader, batch)
    result = CommitResult(target, generation, Digest.of(b""), parent.generation if parent else None)
    signers = [k.keyid for k in request.keys]
    lineage = lineage_for_commit(  # a device key signs only descendants of a release (issue 10)
        signers,
        trust,
        request.lineage_base or ((parent.bundle, parent.authorization, parent.verified.manifest) if parent else None),
    )
    try:
        manifest = _encode_and_place(
            encoder=encoder,
            placer=placer,
            sources=sources,
            request=request,
            generation=generation,
            parent=parent,
            metadata=metadata,
            result=result,
            progress=progress,
            lineage=lineage,
            recording=recording,
        )
        placer.finish()
        batch.sync()  # W1: frames and their directory are durable before anything names them
        _recheck_sources(sources, request, manifest)  # never a mixture of two versions of a file
        _check_self_contained(target_reader, manifest)  # W3, checked: never acknowledge what cannot boot
        result.authorization = authorize(manifest, signers, trust)  # refuse now what boot would refuse
        bundle = sign_manifest(manifest, request.keys)
        _reader_accepts(bundle)
        write_durable(storage, layout.bundle_path(target, generation), bundle)
        placer.created.append(layout.bundle_path(target, generation))
        record = CommitRecord(
            target,
            generation,
            Digest.of(bundle),
            len(bundle),
            manifest.digest(),
            _utc(request.clock()),
        )
        record_bytes = record.to_bytes()
        placer.created.append(layout.record_path(target, generation))  # W4: un-committed first (G1 order)
        write_durable(storage, layout.record_path(target, generation), record_bytes)  # W2: the commit point
    except BaseException:
        last.forget()  # what is on disk now is not what it remembered committing
        with contextlib.suppress(BaseException):
            placer.finish()  # no write may still be running while its file is removed
        _remove_created(storage, placer.created)  # W4
        raise
    last.install(recording, target, manifest.digest())
    result.manifest_digest = manifest.digest()
    result.raw_bytes = manifest.raw_bytes
    result.stored_bytes = manifest.stored_bytes
    result.written_bytes = placer.written_bytes + len(bundle) + len(record_bytes)
    result.counts["copied"] = placer.copied
    result.copied_bytes = placer.copied_bytes
    result.encoded_bytes = placer.written_bytes - placer.copied_bytes
    result.seconds = time.perf_counter() - start
    return result


def _encoder(
    storage: Storage, request: CommitRequest, parent: OpenCheckpoint | None, target: SlotReader, last: LastCommit
) -> tuple[FrameEncoder, Recording | None]:
    """The frame encoder and the recording of this commit for ``last``.

    It reuses and deltas against the parent only under the same data key (§14), with ``last``'s
    raw frames when they describe that parent in the target slot (``lastcommit``).
    """
    recording = last.recording()
    sealing = request.cipher.encryption if request.cipher is not None else None
    if parent is None or not may_share_frames(parent.verified.manifest.encryption, sealing):
        return FrameEncoder(request.options, None, None, request.cipher), recording
    manifest = parent.verified.manifest
    supply = FrameSupply(target, SlotReader(storage, parent.slot), manifest.frame_index())
    remembered = last.for_parent(parent.slot, manifest.digest(), target.slot)
    return FrameEncoder(request.options, manifest, supply, request.cipher, remembered), recording


def _encode_and_place(
    *,
    encoder: FrameEncoder,
    placer: _FramePlacer,
    sources: Iterable[TensorSource],
    request: CommitRequest,
    generation: int,
    parent: OpenCheckpoint | None,
    metadata: dict[str, Any],
    result: CommitResult,
    progress: Progress | None,
    lineage: Lineage | None = None,
    recording: Recording | None = None,
) -> Manifest:
    entries: list[tuple[str, str, tuple[int, ...]]] = []
    frames: dict[int, list[FrameRef]] = {}
    assets = AssetJobs(request.directory.assets, request.options.frame_size, request.cipher)
    assets.signed = request.directory.signed_sha256
    jobs = chain(tensor_jobs(sources, request.options.frame_size, entries), assets.jobs())
    for job, encoded in encode_all(encoder, jobs):
        placer.place(encoded)
        if recording is not None:
            recording.add((job.name, job.index), encoded.ref, job.dtype.name, job.raw)
        frames.setdefault(job.tensor, []).append(encoded.ref)
        result.counts[encoded.kind] += 1
        result.frames += 1
        if progress is not None:
            progress(job.raw.size)
    tensors = tuple(TensorEntry(n, d, s, tuple(frames.get(i, []))) for i, (n, d, s) in enumerate(entries))
    asset_entries = assets.entries(frames)
    direct = [f for t in tensors for f in t.frames] + [f for a in asset_entries for f in a.frames]
    bases = _base_closure(direct, parent)  # every one was obtained with its chain by a worker
    encryption = request.cipher.encryption if request.cipher is not None else None
    return Manifest(
        model=request.model,
        generation=generation,
        parent=parent.verified.manifest.digest() if parent else None,
        created=_utc(request.clock()),
        frame_size=request.options.frame_size,
        policy=request.options.policy,
        tensors=tensors,
        bases=tuple(bases),
        metadata=metadata,
        lineage=lineage,
        assets=asset_entries,
        shards=request.directory.shards,
        index_metadata=request.directory.index_metadata,
        provenance=request.provenance,
        encryption=encryption,
        version=ENCRYPTED_VERSION if encryption is not None else FORMAT_VERSION,
    )


def _base_closure(frames: list[FrameRef], parent: OpenCheckpoint | None) -> list[FrameRef]:
    """Every frame a delta chain needs that no tensor or asset references directly, parent-first order."""
    if parent is None:
        return []
    index = parent.verified.manifest.frame_index()
    direct = {f.digest for f in frames}
    needed: dict[Digest, FrameRef] = {}
    pending = [f.base for f in frames if f.base is not None]
    while pending:
        digest = pending.pop()
        if digest in direct or digest in needed:
            continue
        ref = index[digest]
        needed[digest] = ref
        if ref.base is not None:
            pending.append(ref.base)
    return sorted(needed.values(), key=lambda f: (f.depth, f.digest))


def _check_self_contained(target: SlotReader, manifest: Manifest) -> None:
    """One directory listing, not a stat per frame: every frame the manifest names is in the slot."""
    present = set(target.storage.listdir(layout.frames_dir(target.slot)) or [])
    missing = [f.digest.short() for f in manifest.frame_index().values() if f.digest.hex not in present]
    if missing:
        raise FrameMissingError(
            f"{len(missing)} frame(s) the new manifest names are not in slot {target.slot} ({', '.join(missing[:3])})",
            remedy="this is a bug in the commit path; nothing was committed, the previous checkpoint is intact",
        )


def _remove_created(storage: Storage, paths: list[str]) -> None:
    for path in reversed(paths):
        with contextlib.suppress(OSError, StorageError, ApplianceError):
            storage.unlink(path)
