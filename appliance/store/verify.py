"""Full verification of every committed checkpoint in both slots (``appliance verify``).

Owns: the report of which checkpoints are usable and why not. Does not own repair (scrub).

Normal mode: record, bundle, signature, manifest cross-checks, then the SHA-256 of every
stored frame (each frame file is hashed once per slot even when several checkpoints share it).
Deep mode additionally decodes every tensor frame (through its delta chain) and checks the
SHA-256 of the decoded bytes against the manifest's ``raw_digest``.

Verify takes no lock, so a commit (the persistence watchdog's) may run meanwhile. Its GC
un-commits a checkpoint record first, then bundle, then frames (rule G1): a checkpoint that
fails *and* whose record is gone when re-checked was retired by that commit while it was
read, and is left out of the report instead of being called damaged (docs/design.md §6.3).
A commit's own new checkpoint is never seen before its record (the commit point) exists.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from appliance.crypto import FrameCipher
from appliance.errors import ApplianceError, FrameError, StorageError
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.signing import TrustStore
from appliance.storage import Storage
from appliance.store import layout
from appliance.store.discovery import open_checkpoint, scan
from appliance.store.keys import cipher_for
from appliance.store.restore import FrameDecoder
from appliance.store.sealed import raw_matches
from appliance.store.slot import SlotReader

Progress = Callable[[int], None]


@dataclass
class CheckpointReport:
    slot: str
    generation: int
    ok: bool
    error: str | None = None
    error_class: str | None = None
    frames: int = 0
    stored_bytes: int = 0
    raw_bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass
class VerifyReport:
    deep: bool
    checkpoints: list[CheckpointReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def newest_valid(self) -> CheckpointReport | None:
        valid = [c for c in self.checkpoints if c.ok]
        return max(valid, key=lambda c: c.generation) if valid else None

    @property
    def all_ok(self) -> bool:
        return bool(self.checkpoints) and all(c.ok for c in self.checkpoints)

    def to_dict(self) -> dict[str, object]:
        newest = self.newest_valid
        return {
            "deep": self.deep,
            "ok": self.all_ok,
            "newest_valid": None if newest is None else {"slot": newest.slot, "generation": newest.generation},
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "seconds": round(self.seconds, 6),
        }


class _SlotFrameCache:
    """Per-slot memo of frame verdicts, so shared frames are hashed once."""

    def __init__(self, reader: SlotReader) -> None:
        self.reader = reader
        self.verdicts: dict[Digest, ApplianceError | None] = {}
        self.lock = threading.Lock()

    def check(self, frame: FrameRef) -> ApplianceError | None:
        with self.lock:
            if frame.digest in self.verdicts:
                return self.verdicts[frame.digest]
        try:
            self.reader.read_frame(frame)
            verdict: ApplianceError | None = None
        except (ApplianceError, StorageError) as exc:
            verdict = exc
        with self.lock:
            self.verdicts[frame.digest] = verdict
        return verdict


def verify_store(
    storage: Storage,
    trust: TrustStore,
    model: str,
    *,
    deep: bool = False,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifyReport:
    start = time.perf_counter()
    report = VerifyReport(deep)
    caches: dict[str, _SlotFrameCache] = {}
    for outcome in scan(storage, limits).records:
        entry = CheckpointReport(outcome.slot, outcome.generation, ok=False)
        report.checkpoints.append(entry)
        try:
            if outcome.record is None:
                assert outcome.error is not None
                raise outcome.error
            opened = open_checkpoint(storage, outcome.record, trust, model, limits, check_frames=False)
            cache = caches.setdefault(outcome.slot, _SlotFrameCache(SlotReader(storage, outcome.slot, limits)))
            manifest = opened.verified.manifest
            entry.frames, entry.stored_bytes = len(manifest.frame_index()), manifest.stored_bytes
            entry.raw_bytes = manifest.raw_bytes
            _hash_frames(cache, list(manifest.frame_index().values()), progress)
            if deep:
                _decode_frames(
                    cache.reader,
                    manifest.frame_index(),
                    [f for _, frames in manifest.content_frames() for f in frames],  # tensors and assets
                    cipher_for(storage, manifest.encryption),
                )
            entry.ok = True
        except (ApplianceError, StorageError) as exc:
            if _retired(storage, outcome.slot, outcome.generation):
                report.checkpoints.remove(entry)  # un-committed by a concurrent commit's GC: not damage
                continue
            entry.error, entry.error_class = exc.problem, type(exc).__name__
    report.checkpoints.sort(key=lambda c: (-c.generation, c.slot))
    report.seconds = time.perf_counter() - start
    return report


def _retired(storage: Storage, slot: str, generation: int) -> bool:
    """True when the checkpoint's commit record no longer exists (GC removes it first, rule G1).

    Damage never removes a record without it being absent for good: a record that is still
    there (or cannot be checked) keeps the failure in the report.
    """
    try:
        return storage.size(layout.record_path(slot, generation)) is None
    except (ApplianceError, StorageError, OSError):
        return False


def _workers() -> int:
    return max(1, os.cpu_count() or 1)


def _hash_frames(cache: _SlotFrameCache, frames: list[FrameRef], progress: Progress | None) -> None:
    def one(frame: FrameRef) -> ApplianceError | None:
        verdict = cache.check(frame)
        if progress is not None:
            progress(frame.size)
        return verdict

    with ThreadPoolExecutor(_workers(), thread_name_prefix="verify") as pool:
        for verdict in pool.map(one, frames):
            if verdict is not None:
                raise verdict


def _decode_frames(
    reader: SlotReader, index: dict[Digest, FrameRef], frames: list[FrameRef], cipher: FrameCipher | None
) -> None:
    import numpy as np

    decoder = FrameDecoder(reader, index, cipher)
    local = threading.local()

    def one(frame: FrameRef) -> None:
        buf = getattr(local, "buf", None)
        if buf is None or buf.size < frame.raw_size:
            buf = local.buf = np.empty(frame.raw_size, np.uint8)
        out = buf[: frame.raw_size]
        decoder.decode(frame, out)
        if not raw_matches(cipher, frame, out.data):
            raise FrameError(f"frame {frame.digest.short()} decodes to bytes that fail its raw digest")

    with ThreadPoolExecutor(_workers(), thread_name_prefix="verify-deep") as pool:
        list(pool.map(one, {f.digest: f for f in frames}.values()))
