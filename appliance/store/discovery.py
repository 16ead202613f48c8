"""Discovery: find the newest checkpoint that is committed *and* verifies; else fall back.

Owns: scanning both slots, opening one candidate (record -> bundle -> signature -> manifest ->
cross-checks -> frame presence), and walking candidates newest-first until one opens.
Does not own hashing frame contents (the restore does that exactly once) or slot boot state.

A candidate *opens* when: its commit record parses and checks itself; the bundle file matches
the record's digest and size; the signature verifies against the trust store and the signers'
roles allow this checkpoint (a device-signed one needs a release lineage of the same model and
tensor layout: ``LineageError``/``RoleError``); the manifest's model is this store's; the
manifest's generation and digest match the record; and every frame (including delta bases)
is present in the slot with its stored size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.errors import (
    ApplianceError,
    CheckpointNotFoundError,
    ManifestError,
    NoValidCheckpointError,
    RollbackError,
    StorageError,
)
from appliance.format.commit import SLOT_NAMES, CommitRecord
from appliance.format.plan import Candidate, SlotView, boot_order
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.signing import Authorization, TrustStore, VerifiedManifest, verify_bundle
from appliance.storage import Storage
from appliance.store.slot import RecordOutcome, SlotReader


@dataclass(frozen=True)
class OpenCheckpoint:
    """A checkpoint that passed every check short of hashing its frames."""

    slot: str
    record: CommitRecord
    verified: VerifiedManifest
    bundle: bytes = field(default=b"", repr=False, compare=False)  # the verified bundle file's bytes

    @property
    def generation(self) -> int:
        return self.record.generation

    @property
    def authorization(self) -> Authorization:
        assert self.verified.authorization is not None  # verify_bundle always sets it
        return self.verified.authorization


@dataclass(frozen=True)
class Failure:
    slot: str
    generation: int
    error: ApplianceError

    def describe(self) -> str:
        return f"{self.slot}/gen {self.generation}: {type(self.error).__name__}: {self.error.problem}"


@dataclass(frozen=True)
class Scan:
    records: list[RecordOutcome]
    seen: set[int]
    available: dict[str, bool]

    def views(self, good: dict[str, int | None] | None = None) -> list[SlotView]:
        good = good or {}
        out = []
        for slot in SLOT_NAMES:
            gens = [r.generation for r in self.records if r.slot == slot and r.record is not None]
            out.append(SlotView(slot, self.available[slot], max(gens, default=None), good.get(slot)))
        return out


@dataclass
class Selection:
    opened: OpenCheckpoint
    failures: list[Failure] = field(default_factory=list)


def scan(storage: Storage, limits: Limits = DEFAULT_LIMITS) -> Scan:
    records: list[RecordOutcome] = []
    seen: set[int] = set()
    available = {}
    for slot in SLOT_NAMES:
        reader = SlotReader(storage, slot, limits)
        available[slot] = reader.available()
        if available[slot]:
            try:
                seen |= reader.generations_seen()
                records.extend(reader.records())
            except (StorageError, ApplianceError):
                available[slot] = False
    return Scan(records, seen, available)


def open_checkpoint(
    storage: Storage,
    record: CommitRecord,
    trust: TrustStore,
    model: str,
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_frames: bool = True,
) -> OpenCheckpoint:
    reader = SlotReader(storage, record.slot, limits)
    bundle = reader.read_bundle(record)
    verified = verify_bundle(bundle, trust, expected_model=model, limits=limits)
    manifest = verified.manifest
    if manifest.generation != record.generation:
        raise ManifestError(f"manifest says generation {manifest.generation}, its commit record {record.generation}")
    if manifest.digest() != record.manifest_digest:
        raise ManifestError("manifest digest differs from the one its commit record names")
    if check_frames:
        for frame in manifest.frame_index().values():
            reader.check_present(frame)
    return OpenCheckpoint(record.slot, record, verified, bundle)


def select(
    storage: Storage,
    trust: TrustStore,
    model: str,
    *,
    generation: int | None = None,
    floor: int = 0,
    good_slot: str | None = None,
    exclude: frozenset[tuple[str, int]] = frozenset(),
    limits: Limits = DEFAULT_LIMITS,
    found: Scan | None = None,
) -> Selection:
    """Open the newest usable checkpoint (or exactly ``generation``), recording every failure."""
    found = found or scan(storage, limits)
    failures = [Failure(r.slot, r.generation, r.error) for r in found.records if r.error is not None]
    by_key = {(r.slot, r.generation): r.record for r in found.records if r.record is not None}
    candidates = [Candidate(s, g) for (s, g) in by_key if (s, g) not in exclude]
    if generation is not None:
        candidates = [c for c in candidates if c.generation == generation]
        if not candidates:
            raise CheckpointNotFoundError(f"generation {generation} is not committed in either slot")
    for cand in boot_order(candidates, good_slot):
        try:
            if cand.generation < floor:
                raise RollbackError(f"generation {cand.generation} is below the anti-rollback floor {floor}")
            opened = open_checkpoint(storage, by_key[(cand.slot, cand.generation)], trust, model, limits)
            return Selection(opened, failures)
        except (ApplianceError, StorageError) as exc:
            failures.append(Failure(cand.slot, cand.generation, exc))
    reasons = "; ".join(f.describe() for f in failures) or "both slots are empty"
    raise NoValidCheckpointError(f"no committed checkpoint verifies ({reasons})")
