"""``Store``: one object per store root, tying configuration, trust, lock and operations together.

Owns: creating and opening a store, and the public operations (commit, select, restore,
verify, log, status, gc, trust changes) with the writer lock held where they write.
Does not own the algorithms (sibling modules) or tensors (``appliance.api``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.crypto import KekSource
from appliance.errors import (
    ApplianceError,
    CheckpointNotFoundError,
    ConfigError,
    ManifestError,
    NoValidCheckpointError,
    StorageError,
    StoreExistsError,
    StoreNotFoundError,
    TrustStoreError,
    UsageError,
)
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.commit import SLOT_NAMES
from appliance.format.manifest import Manifest
from appliance.format.pins import Pins
from appliance.format.plan import choose_target_slot, next_generation, protected_slot
from appliance.format.provenance import Provenance
from appliance.format.restore_time import DeviceRates, choose_policy
from appliance.format.statement import parse_bundle, parse_statement
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.signing import Authorization, PublicKey, SigningKey, TrustStore, verify_bundle
from appliance.storage import LocalStorage, Storage, write_durable
from appliance.store import layout
from appliance.store.assets import DirectoryParts
from appliance.store.commit import CommitRequest, CommitResult, commit
from appliance.store.config import StoreConfig
from appliance.store.discovery import OpenCheckpoint, Selection, open_checkpoint, scan, select
from appliance.store.encode import EncodeOptions, TensorSource
from appliance.store.gc import GcReport, collect_slot
from appliance.store.keys import create_keyring, keys_for
from appliance.store.lastcommit import LastCommit
from appliance.store.lock import writer_lock
from appliance.store.restore import Destination, RestoreStats, restore_into
from appliance.store.slot import SlotReader
from appliance.store.verify import VerifyReport, verify_store

Progress = Callable[[int], None]
COMPACT_RATIO_ESTIMATE = 1 / 1.49  # stored/raw of bf16 weights under compact (docs/performance.md)
GoodProvider = Callable[[], Mapping[str, int | None]]


def _read_json(storage: Storage, path: str, what: str, limits: Limits) -> Any:
    try:
        data = storage.read(path, limits.config_max_bytes)
    except FileNotFoundError:
        raise
    except ApplianceError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.problem}") from exc
    try:
        return strict_loads(data, what=what, max_bytes=limits.config_max_bytes, max_depth=8)
    except ApplianceError as exc:
        raise ConfigError(f"{what} is damaged: {exc.problem}") from exc


class Store:
    def __init__(
        self,
        storage: Storage,
        config: StoreConfig,
        trust: TrustStore,
        *,
        lock_path: Path | None = None,
        trust_path: Path | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.storage = storage
        self.config = config
        self.trust = trust
        self.lock_path = lock_path
        self.trust_path = trust_path
        self.limits = limits
        # Slot boot states (GOOD generations) come from the boot layer when it is present.
        self.good_provider: GoodProvider = dict

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def init(
        cls, root: str | Path, trusted: Sequence[PublicKey], config: StoreConfig, *, kek: KekSource | None = None
    ) -> Store:
        """A new store; with ``config.encrypt`` a keyring whose data key is wrapped under ``kek`` (§14)."""
        root = Path(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise StoreExistsError(f"{root} exists and is not an empty directory")
        if not trusted:
            raise TrustStoreError("a store needs at least one trusted public key", remedy="pass --trust PUBKEY")
        root.mkdir(mode=0o750, parents=True, exist_ok=True)
        storage = LocalStorage(root)
        trust = TrustStore()
        for key in trusted:
            trust = trust.with_key(key)
        for slot in SLOT_NAMES:
            storage.mkdir(slot)
            storage.fsync_dir("")
            for sub in (layout.frames_dir(slot), layout.checkpoints_dir(slot)):
                storage.mkdir(sub)
            storage.fsync_dir(slot)
        if not Path(config.trust).is_absolute():
            write_durable(storage, config.trust, canonical_bytes(trust.to_dict()) + b"\n")
        if config.encrypt:
            if kek is None:
                raise UsageError("an encrypted store needs a key-encryption key", remedy="pass --kek file:PATH")
            create_keyring(storage, kek)
        write_durable(storage, layout.STORE_CONFIG, canonical_bytes(config.to_dict()) + b"\n")
        return cls.open(root)

    @classmethod
    def open(
        cls,
        root: str | Path,
        trust_path: str | Path | None = None,
        limits: Limits = DEFAULT_LIMITS,
        *,
        kek: KekSource | None = None,
        device_id: str | None = None,
    ) -> Store:
        """Open a store; ``kek`` overrides the KEK provider its keyring names (encrypted stores);
        ``device_id``: this node's own id (device-role signatures count only from its key;
        ``appliance.node.identity.open_node_store`` passes it)."""
        root = Path(root)
        storage = LocalStorage(root)
        keys_for(storage).kek_override = kek
        try:
            config = StoreConfig.from_dict(_read_json(storage, layout.STORE_CONFIG, "store.json", limits))
        except FileNotFoundError as exc:
            raise StoreNotFoundError(f"{root} is not an appliance store (no {layout.STORE_CONFIG})") from exc
        except StorageError as exc:
            raise StoreNotFoundError(f"{root} cannot be opened: {exc.problem}") from exc
        path = Path(trust_path) if trust_path else Path(config.trust)
        path = path if path.is_absolute() else root / path
        trust = cls._load_trust(path, limits).for_device(device_id)
        return cls(
            storage,
            config,
            trust,
            lock_path=root / layout.LOCK_FILE,
            trust_path=path,
            limits=limits,
        )

    @staticmethod
    def _load_trust(path: Path, limits: Limits) -> TrustStore:
        try:
            obj = _read_json(LocalStorage(path.parent), path.name, str(path), limits)
        except FileNotFoundError as exc:
            raise TrustStoreError(f"trust store {path} does not exist") from exc
        return TrustStore.from_dict(obj)

    def save_trust(self, trust: TrustStore) -> None:
        if self.trust_path is None:
            raise TrustStoreError("this store has no trust file to update")
        with writer_lock(self.lock_path):
            storage = LocalStorage(self.trust_path.parent)
            write_durable(storage, self.trust_path.name, canonical_bytes(trust.to_dict()) + b"\n")
        self.trust = trust if trust.device is not None else trust.for_device(self.trust.device)

    # --- writing ---------------------------------------------------------------------------

    def commit(
        self,
        sources: Iterable[TensorSource],
        keys: Sequence[SigningKey],
        metadata: Mapping[str, Any] | None = None,
        *,
        policy: str | None = None,
        full: bool = False,
        floor: int = 0,
        progress: Progress | None = None,
        directory: DirectoryParts | None = None,
        provenance: Provenance | None = None,
        allow_empty: bool = False,
        lineage_base: tuple[bytes, Authorization, Manifest] | None = None,
        last: LastCommit | None = None,
        reread: bool = False,
    ) -> tuple[CommitResult, GcReport]:
        """Commit ``sources`` (and, for a model directory, its assets and shard records).

        ``reread``: read file-backed sources once more and compare with the frames (commits from
        files someone else may hold mapped: ``appliance commit``, ``api.save_directory``).

        ``last``: a long-lived committer's memory of its previous commit (``store.lastcommit``), so the
        next one into the same slot neither re-reads nor re-verifies its parent; updated in place.
        """
        profile = self.device_profile()
        options = EncodeOptions(
            policy=self.resolve_policy(policy or self.config.policy, profile),
            frame_size=self.config.frame_size,
            zstd_level=self.config.zstd_level,
            max_delta_depth=self.config.max_delta_depth,
            full=full,
            exponent_grouping=profile is not None and profile.gpu_decoder,
        )
        with writer_lock(self.lock_path):
            good = self.good_provider()
            pinned = self.pins().generations  # a damaged pins.json stops the commit before it writes
            request = CommitRequest(
                self.config.model,
                options,
                tuple(keys),
                metadata or {},
                floor,
                good,
                directory=directory or DirectoryParts(),
                provenance=provenance,
                allow_empty=allow_empty,
                cipher=keys_for(self.storage).active() if self.config.encrypt else None,
                lineage_base=lineage_base,
                reread=reread,
            )
            result = commit(self.storage, self.trust, sources, request, progress, last=last)
            protect = frozenset(g for g in (good.get(result.slot),) if g is not None) | pinned
            gc = collect_slot(
                self.storage, result.slot, self.trust, self.config.model, keep=self.config.keep, protect=protect
            )
        return result, gc

    @staticmethod
    def resolve_policy(policy: str, profile: DeviceRates | None = None) -> str:
        """``auto`` picks by this device's measured storage vs decode speed (``device-profile.json``,
        written by ``appliance report ROOT --save-profile``); without a profile it means
        ``compact``, the policy that also decodes on a GPU. The choice is recorded in the manifest."""
        if policy != "auto":
            return policy
        return choose_policy(profile, COMPACT_RATIO_ESTIMATE) if profile is not None else "compact"

    def device_profile(self) -> DeviceRates | None:
        """The saved device profile, or ``None`` (absent or unreadable: ``auto`` falls back)."""
        try:
            data = _read_json(self.storage, layout.DEVICE_PROFILE, layout.DEVICE_PROFILE, self.limits)
            return DeviceRates.from_dict(data)
        except (FileNotFoundError, ApplianceError):
            return None

    def save_device_profile(self, rates: DeviceRates) -> None:
        with writer_lock(self.lock_path):
            write_durable(self.storage, layout.DEVICE_PROFILE, canonical_bytes(rates.to_dict()) + b"\n")

    # --- pins ------------------------------------------------------------------------------

    def pins(self) -> Pins:
        """Pinned generations (``pins.json``); absent means none. Damaged: ``ConfigError``."""
        try:
            return Pins.from_dict(_read_json(self.storage, layout.PINS, layout.PINS, self.limits))
        except FileNotFoundError:
            return Pins()
        except (ManifestError, ConfigError) as exc:
            raise ConfigError(
                exc.problem if isinstance(exc, ConfigError) else f"{layout.PINS} is damaged: {exc.problem}",
                remedy=f"move {layout.PINS} aside and pin again (`appliance pin ROOT GEN --label ...`); "
                "retention and commits wait until the pins can be read",
            ) from exc

    def pin(self, generation: int, label: str = "pinned") -> Pins:
        """Pin a committed, verifiable ``generation``: retention keeps it until it is unpinned."""
        with writer_lock(self.lock_path):
            found = [r for r in scan(self.storage, self.limits).records if r.generation == generation and r.record]
            if not found:
                raise CheckpointNotFoundError(f"generation {generation} is not committed in this store")
            for outcome in found:
                assert outcome.record is not None
                open_checkpoint(
                    self.storage, outcome.record, self.trust, self.config.model, self.limits, check_frames=False
                )
            try:
                pins = self.pins().with_pin(generation, label)
            except ManifestError as exc:
                raise UsageError(exc.problem) from exc
            write_durable(self.storage, layout.PINS, canonical_bytes(pins.to_dict()) + b"\n")
            return pins

    def unpin(self, generation: int) -> Pins:
        with writer_lock(self.lock_path):
            current = self.pins()
            if generation not in current.generations:
                raise CheckpointNotFoundError(
                    f"generation {generation} is not pinned", remedy="list the pinned generations: `appliance pin ROOT`"
                )
            pins = current.without(generation)
            write_durable(self.storage, layout.PINS, canonical_bytes(pins.to_dict()) + b"\n")
            return pins

    def gc(self) -> list[GcReport]:
        with writer_lock(self.lock_path):
            good = self.good_provider()
            pinned = self.pins().generations
            return [
                collect_slot(
                    self.storage,
                    slot,
                    self.trust,
                    self.config.model,
                    keep=self.config.keep,
                    protect=frozenset(g for g in (good.get(slot),) if g is not None) | pinned,
                )
                for slot in SLOT_NAMES
            ]

    # --- reading ---------------------------------------------------------------------------

    def select(
        self,
        generation: int | None = None,
        *,
        floor: int = 0,
        exclude: frozenset[tuple[str, int]] = frozenset(),
    ) -> Selection:
        good = self.good_provider()
        good_slot = protected_slot(scan(self.storage, self.limits).views(dict(good))) if good else None
        return select(
            self.storage,
            self.trust,
            self.config.model,
            generation=generation,
            floor=floor,
            good_slot=good_slot,
            exclude=exclude,
            limits=self.limits,
        )

    def restore_into(
        self,
        opened: OpenCheckpoint,
        dest: Mapping[str, Destination],
        *,
        deep: bool = False,
        workers: int | None = None,
        progress: Progress | None = None,
        skip: frozenset[str] = frozenset(),
        written: set[str] | None = None,
    ) -> RestoreStats:
        return restore_into(
            self.storage, opened, dest, deep=deep, workers=workers, progress=progress, skip=skip, written=written
        )

    def verify(self, deep: bool = False, progress: Progress | None = None) -> VerifyReport:
        return verify_store(
            self.storage,
            self.trust,
            self.config.model,
            deep=deep,
            progress=progress,
            limits=self.limits,
        )

    def log(self, *, tensors: bool = False) -> list[dict[str, Any]]:
        """Every commit record in both slots, newest first, with what its manifest says.

        ``tensors``: also each checkpoint's ``tensor_list`` ({name, dtype, shape} in manifest order).
        """
        entries = []
        for outcome in scan(self.storage, self.limits).records:
            entry: dict[str, Any] = {"slot": outcome.slot, "generation": outcome.generation}
            if outcome.record is None:
                entry["error"] = outcome.error.problem if outcome.error else "unreadable"
                entries.append(entry)
                continue
            entry["committed"] = outcome.record.committed
            entry["manifest_digest"] = outcome.record.manifest_digest.hex
            try:
                data = SlotReader(self.storage, outcome.slot, self.limits).read_bundle(outcome.record)
                manifest = parse_statement(parse_bundle(data, self.limits).payload, self.limits)
            except ApplianceError as exc:
                entry["error"] = exc.problem
                entries.append(entry)
                continue
            entry.update(self._authorization(data))
            kinds = {"delta": 0, "full": 0}
            for f in manifest.all_frames():
                kinds["delta" if f.base is not None else "full"] += 1
            entry.update(
                created=manifest.created,
                parent=manifest.parent.hex if manifest.parent else None,
                policy=manifest.policy,
                tensors=len(manifest.tensors),
                assets=len(manifest.assets),
                format_version=manifest.version,
                raw_bytes=manifest.raw_bytes,
                stored_bytes=manifest.stored_bytes,
                frames=kinds,
                metadata=dict(manifest.metadata),
            )
            if tensors:
                entry["tensor_list"] = [
                    {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in manifest.tensors
                ]
            if manifest.provenance is not None:
                entry["provenance"] = manifest.provenance.to_dict() | {"summary": manifest.provenance.describe()}
            entries.append(entry)
        entries.sort(key=lambda e: (-e["generation"], e["slot"]))
        return entries

    def _authorization(self, bundle: bytes) -> dict[str, Any]:
        """Signer role and release base of a bundle, or why it does not verify (for log and status)."""
        try:
            verified = verify_bundle(bundle, self.trust, expected_model=self.config.model, limits=self.limits)
        except ApplianceError as exc:
            return {"signer_role": None, "release_base": None, "verify_error": f"{type(exc).__name__}: {exc.problem}"}
        assert verified.authorization is not None
        return verified.authorization.to_dict()

    def status(self) -> dict[str, Any]:
        found = scan(self.storage, self.limits)
        good = dict(self.good_provider())
        slots = {}
        for view in found.views(good):
            free = None
            if view.available:
                try:
                    free = self.storage.free_bytes(view.name)
                except (ApplianceError, OSError):
                    free = None
            gens = sorted(
                (r.generation for r in found.records if r.slot == view.name and r.record),
                reverse=True,
            )
            slots[view.name] = {
                "available": view.available,
                "generations": gens,
                "free_bytes": free,
                "good_generation": view.good_generation,
            }
        try:
            newest = self.select()
            provenance = newest.opened.verified.manifest.provenance
            newest_valid: dict[str, Any] | None = {
                "slot": newest.opened.slot,
                "generation": newest.opened.generation,
                **newest.opened.authorization.to_dict(),
            } | ({"provenance": provenance.to_dict() | {"summary": provenance.describe()}} if provenance else {})
            failures = [f.describe() for f in newest.failures]
        except NoValidCheckpointError as exc:
            newest_valid, failures = None, [exc.problem]
        try:
            target: str | None = choose_target_slot(found.views(good))
        except ApplianceError:
            target = None
        return {
            "root": str(getattr(self.storage, "root", "")),
            "model": self.config.model,
            "policy": self.config.policy,
            "frame_size": self.config.frame_size,
            "trusted_keys": [k.keyid for k in self.trust.keys],
            "slots": slots,
            "newest_valid": newest_valid,
            "problems": failures,
            "next_commit": {"slot": target, "generation": next_generation(found.seen)},
        }
