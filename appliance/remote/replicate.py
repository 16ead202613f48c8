"""The replicator: push the newest committed checkpoint to object storage, in an order readers rely on.

Owns: ``upload_checkpoint`` (blobs -> bundle -> signed head, each step only after the previous
one was acknowledged by the server) and ``Replicator`` (poll the store, keep the durable queue,
retry with exponential backoff and full jitter, emit events). Runs as ``appliance-replicate``:
it reads committed files of the store (never takes the writer lock, never writes the store),
its head key and its credentials, and writes only its state directory.

Upload order (docs/design.md §11.4): every blob (skipped when the bucket already holds the key
with its size — keys are content addresses, so the same key is the same bytes) -> the bundle
-> the head. A reader that finds a head therefore finds its bundle and every blob; a cut at any
point leaves the previous head in place, naming a complete older checkpoint.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from appliance.errors import ApplianceError, NoValidCheckpointError, StorageError
from appliance.events import EventLog
from appliance.format.digest import Digest
from appliance.format.portable import BundleName, blob_key, required_blobs
from appliance.format.remote import HEAD_KEY, HeadRecord, backoff_delay
from appliance.remote.head import sign_head
from appliance.remote.metrics import ReplicateMetrics
from appliance.remote.s3 import ObjectStore
from appliance.remote.state import Replicated, ReplicationState, StateDir
from appliance.signing import SigningKey
from appliance.store.discovery import OpenCheckpoint
from appliance.store.slot import SlotReader
from appliance.store.store import Store
from appliance.transfer.slotblobs import read_slot_blob


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class UploadReport:
    generation: int
    blobs: int = 0
    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "seconds": round(self.seconds, 6)}


def upload_checkpoint(
    store: Store,
    objects: ObjectStore,
    opened: OpenCheckpoint,
    *,
    kind: str,
    name: str,
    sequence: int,
    keys: Sequence[SigningKey],
    clock: Callable[[], float] = time.time,
) -> UploadReport:
    """Blobs, then bundle, then the signed head under ``objects``' prefix. Re-running resumes."""
    start = time.perf_counter()
    reader = SlotReader(store.storage, opened.slot, store.limits)
    bundle = reader.read_bundle(opened.record)
    manifest = opened.verified.manifest
    report = UploadReport(opened.generation)
    for blob in required_blobs(manifest):
        report.blobs += 1
        key = blob_key(blob.digest)
        if objects.size(key) == blob.size:
            report.skipped += 1
            continue
        objects.put(key, read_slot_blob(reader, blob))  # verified as read from the slot
        report.uploaded += 1
        report.bytes_uploaded += blob.size
    name_ = BundleName(opened.generation, Digest.of(bundle))
    if objects.size(name_.key) != len(bundle):
        objects.put(name_.key, bundle)
        report.bytes_uploaded += len(bundle)
    head = HeadRecord(kind, name, manifest.model, sequence, opened.generation, name_, manifest.digest(), _utc(clock()))
    data = sign_head(head, keys)
    objects.put(HEAD_KEY, data)
    report.bytes_uploaded += len(data)
    report.seconds = time.perf_counter() - start
    return report


class Replicator:
    def __init__(
        self,
        store: Store,
        objects: ObjectStore,
        *,
        device: str,
        keys: Sequence[SigningKey],
        state_dir: StateDir,
        events: EventLog,
        retry_base: float = 2.0,
        retry_cap: float = 600.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store, self.objects, self.device, self.keys = store, objects, device, tuple(keys)
        self.state_dir, self.events = state_dir, events
        self.retry_base, self.retry_cap, self.clock, self.rand = retry_base, retry_cap, clock, rand
        self.metrics = ReplicateMetrics(state_dir.path)
        self.last_failure: BaseException | None = None  # the last pass's failure (`replicate --once` maps it)

    def step(self, *, now: bool = False) -> dict[str, Any]:
        """One pass, then the metrics textfile is refreshed from the durable queue.

        ``now=True`` (``appliance replicate --once``: an operator's "try it now") attempts the upload even
        while the loop's backoff after a failure is still running; the loop itself always honours it.
        """
        newest: list[int] = []
        self.last_failure = None
        outcome = self._step(newest, now)
        self.metrics.update(self.state_dir.load(self.device), newest[0] if newest else None)
        self.metrics.write()
        return outcome

    def _step(self, newest: list[int], now: bool) -> dict[str, Any]:
        """Replicate the newest valid checkpoint if it is newer than the replica."""
        state = self.state_dir.load(self.device)
        at = self.clock()
        if not now and state.next_attempt_at is not None and at < state.next_attempt_at:
            return {"action": "waiting", "retry_in": round(state.next_attempt_at - at, 3)}
        try:
            opened = self.store.select().opened
        except NoValidCheckpointError:
            return {"action": "idle", "reason": "no valid checkpoint"}
        newest.append(opened.generation)
        if state.replicated is not None and state.replicated.generation >= opened.generation:
            return {"action": "up-to-date", "generation": state.replicated.generation}
        state = replace(state, pending_generation=opened.generation, retries=state.retries + (state.attempts > 0))
        self.state_dir.save(state)
        try:
            report = upload_checkpoint(
                self.store, self.objects, opened, kind="device", name=self.device,
                sequence=opened.generation, keys=self.keys, clock=self.clock,
            )  # fmt: skip
        except (ApplianceError, StorageError, FileNotFoundError) as exc:
            return self._failed(state, opened.generation, exc)
        done = Replicated(opened.generation, opened.record.manifest_digest.hex, opened.generation, _utc(self.clock()))
        state = state.with_outcome(
            {"generation": opened.generation, "ok": True, "at": done.at, "bytes": report.bytes_uploaded},
            replicated=done, pending_generation=None, attempts=0, last_error=None, next_attempt_at=None,
            uploads=state.uploads + 1, blobs_uploaded=state.blobs_uploaded + report.uploaded,
            blobs_skipped=state.blobs_skipped + report.skipped,
            bytes_uploaded=state.bytes_uploaded + report.bytes_uploaded, last_success_at=self.clock(),
        )  # fmt: skip
        self.state_dir.save(state)
        self.metrics.duration.observe(report.seconds)
        self.state_dir.raise_seen(self.objects.prefix, opened.generation)
        self.events.emit("remote.replicated", device=self.device, **report.to_dict())
        return {"action": "replicated", **report.to_dict()}

    def _failed(self, state: ReplicationState, generation: int, exc: BaseException) -> dict[str, Any]:
        self.last_failure = exc
        attempts = state.attempts + 1
        delay = backoff_delay(attempts, base=self.retry_base, cap=self.retry_cap, rand=self.rand())
        problem = exc.problem if isinstance(exc, ApplianceError) else f"missing: {exc}"
        error = type(exc).__name__
        state = state.with_outcome(
            {"generation": generation, "ok": False, "at": _utc(self.clock()), "error": error, "problem": problem},
            attempts=attempts, last_error=f"{error}: {problem}", next_attempt_at=self.clock() + delay,
            failures=state.failures + 1,
        )  # fmt: skip
        self.state_dir.save(state)
        self.events.emit(
            "remote.replicate_failed", device=self.device, generation=generation, error=error, problem=problem,
            attempt=attempts, retry_in=round(delay, 3),
        )  # fmt: skip
        return {"action": "failed", "generation": generation, "error": error, "problem": problem, "retry_in": delay}

    def run(self, stop: threading.Event, poll_interval: float) -> None:
        """Loop until ``stop``: a pass, then wait for the poll interval or the retry time."""
        while not stop.is_set():
            outcome = self.step()
            wait = poll_interval
            if outcome["action"] in ("failed", "waiting"):
                wait = min(poll_interval, float(outcome["retry_in"])) if outcome["retry_in"] else 0.0
            stop.wait(max(0.05, wait))
