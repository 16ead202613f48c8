"""First boot of a flashed node: from empty CKPT partitions to a provisioned node, resumable.

Owns: the first-boot steps (``appliance.format.provisioning.STEPS``) and their order:

1. ``format``   (before the slot mounts) ext4 on CKPT_A/CKPT_B only where blkid finds no signature;
2. ``mounts``   both slots are mounted (the mount units mount by partlabel);
3. ``store``    store.json and the slot directories (store.json written last: the store exists);
                with node.json ``encrypt_kek`` first the keyring (``appliance.provision.keyring``);
4. ``trust``    the node's trust store holds every release key of the image's release trust store;
5. ``key``      the device signing key exists in the key provider (``appliance.node.keyprovider``);
6. ``register`` device.json names the device id, key id and role; the key is in the trust store;
7. ``factory``  the factory checkpoint is imported (verified) when no slot holds a committed one;
                into an encrypted store re-sealed under its key and signed by the (registered)
                device key, with the release as lineage (``appliance.transfer.reseal``);
8. ``floor``    the anti-rollback floor is at least the newest committed generation (the factory's);
9. ``provision`` the one-shot provisioning file is applied, then shredded;
10. ``done``    done.json is written last; the first-boot units do not start again.

Every step checks what is already there and does only what is missing, and every write is
durable (temp file, fsync, rename, directory fsync), so a power cut at any point leaves a node
that completes provisioning on the next boot (tests/integration/test_firstboot.py cuts at each).
Each step emits ``provision.step`` (journald ``MESSAGE_ID``) and prints a marker line
``APPLIANCE-FIRSTBOOT <step> <detail>`` (the VM tier reads them on the serial console).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, ProvisioningError
from appliance.events import EventLog
from appliance.format.canonical import canonical_bytes
from appliance.format.commit import SLOT_NAMES
from appliance.format.provisioning import (
    DeviceIdentity,
    Provisioning,
    check_device_id,
    device_key_comment,
)
from appliance.node.config import NodeConfig
from appliance.node.floor import FloorMissingError, open_floor
from appliance.node.keyprovider import DEVICE_KEY, KeyProvider, open_key_provider
from appliance.node.mounts import unavailable_slots
from appliance.provision import files
from appliance.provision.keyring import ensure_keyring, provider_name
from appliance.provision.partitions import PartitionOutcome, Runner, format_empty_partitions, run
from appliance.signing import TrustStore
from appliance.signing.trust import DEVICE
from appliance.storage import LocalStorage
from appliance.store import layout
from appliance.store.bootstate import SlotStates
from appliance.store.config import StoreConfig
from appliance.store.discovery import scan
from appliance.store.store import Store


@dataclass(frozen=True)
class FirstBootPaths:
    """Where first boot finds the image's inputs and writes the node's identity (docs/image.md §4)."""

    partlabels: Path = Path("/dev/disk/by-partlabel")
    factory: Path = Path("/usr/share/appliance/factory")
    release_trust: Path = Path("/usr/share/appliance/trust/release.json")
    provision_file: Path = Path("/etc/appliance/provision.json")
    etc: Path = Path("/etc/appliance")
    state: Path = Path("/var/lib/appliance-provision")
    serial: Path = Path("/proc/device-tree/serial-number")
    machine_id: Path = Path("/etc/machine-id")

    def under(self, root: Path) -> FirstBootPaths:
        """Every path re-based below ``root`` (tests, and provisioning a mounted image offline)."""
        return replace(self, **{f.name: root / str(getattr(self, f.name)).lstrip("/") for f in fields(self)})

    @property
    def done(self) -> Path:
        return self.state / "done.json"


class FirstBoot:
    def __init__(
        self,
        config: NodeConfig,
        paths: FirstBootPaths | None = None,
        *,
        runner: Runner = run,
        events: EventLog | None = None,
        say: Callable[[str], None] = print,
        keys: KeyProvider | None = None,
    ) -> None:
        self.config = config
        self.paths = paths or FirstBootPaths()
        self.runner = runner
        self.events = events or EventLog(config.event_log, "firstboot")
        self.say = say
        self.keys = keys or open_key_provider(config)
        self.summary: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return self.paths.done.exists()

    # --- the two phases -------------------------------------------------------------------------

    def format(self) -> list[PartitionOutcome]:
        """Phase 1, before the slot mounts: format the empty CKPT partitions."""
        outcomes: list[PartitionOutcome] = []

        def step() -> str:
            outcomes.extend(format_empty_partitions(self.paths.partlabels, self.runner))
            return ", ".join(
                f"{o.label} {o.action}{' (' + o.filesystem + ')' if o.filesystem else ''}" for o in outcomes
            )

        self._step("format", step)
        return outcomes

    def provision(self) -> dict[str, Any]:
        """Phase 2, with the slots mounted: every remaining step; returns the summary in done.json."""
        if self.done:
            summary: dict[str, Any] = files.read_json(self.paths.done) or {}
            return summary
        for name, fn in (
            ("mounts", self._mounts), ("store", self._store), ("trust", self._trust),
            ("key", self._key), ("register", self._register), ("factory", self._factory),
            ("floor", self._floor), ("provision", self._provisioning), ("done", self._done),
        ):  # fmt: skip
            self._step(name, fn)
        self.events.emit(
            "provision.done", **{k: self.summary.get(k) for k in ("device_id", "keyid", "factory_generation")}
        )
        return self.summary

    def _step(self, name: str, fn: Callable[[], str]) -> None:
        start = time.perf_counter()
        try:
            detail = fn()
        except ApplianceError as exc:
            self.events.emit("provision.failed", step=name, error=type(exc).__name__, problem=exc.problem)
            self.say(f"APPLIANCE-FIRSTBOOT {name} FAILED {type(exc).__name__}: {exc.problem}")
            raise
        seconds = round(time.perf_counter() - start, 3)
        self.events.emit("provision.step", step=name, detail=detail, seconds=seconds)
        self.say(f"APPLIANCE-FIRSTBOOT {name} {detail}")

    # --- steps ------------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(self.config.store)

    @property
    def trust_path(self) -> Path:
        return Path(self.config.trust) if self.config.trust else self.root / layout.TRUST_FILE

    def _mounts(self) -> str:
        missing = unavailable_slots(self.root, self.config.require_mounts)
        if missing:
            raise ProvisioningError(
                "; ".join(missing.values()),
                remedy="check the slot mounts (systemctl status var-lib-appliance-A.mount var-lib-appliance-B.mount)",
            )
        return "slots A and B available"

    def _store(self) -> str:
        storage = LocalStorage(self.root)
        spec = self.config.encrypt_kek
        if storage.size(layout.STORE_CONFIG) is not None:
            return self._existing_store(spec)
        factory = files.read_json(self.paths.factory / layout.STORE_CONFIG, 64 * 1024)
        base = StoreConfig.from_dict(factory) if factory is not None else StoreConfig(model=self.config.model)
        trust = str(self.trust_path) if self.config.trust else layout.TRUST_FILE
        config = replace(base, trust=trust, encrypt=bool(spec))
        for slot in SLOT_NAMES:
            for sub in (layout.frames_dir(slot), layout.checkpoints_dir(slot)):
                if storage.listdir(sub) is None:
                    storage.mkdir(sub)
            storage.fsync_dir(slot)
        how = "created"
        if spec:
            keyring = ensure_keyring(storage, spec)
            how = f"created encrypted (kek: {provider_name(spec)}{', keyring reused' if keyring == 'reused' else ''})"
        files.write_file(self.root / layout.STORE_CONFIG, canonical_bytes(config.to_dict()) + b"\n")
        return f"{how} for model {config.model!r}"

    def _existing_store(self, spec: str) -> str:
        existing = StoreConfig.from_dict(files.read_json(self.root / layout.STORE_CONFIG, 64 * 1024))
        if spec and not existing.encrypt:
            raise ProvisioningError(
                f"node.json asks for an encrypted store (encrypt_kek {spec}) but {self.root} holds a plain one "
                "(the CKPT partitions kept a store from before this image)",
                remedy=f"seal new commits with `appliance key {self.root} enable --kek {spec} --create-kek` (older "
                "frames stay clear until retention removes them), or wipe the CKPT partitions (wipefs -a) and boot",
            )
        return "store exists" + (" (encrypted)" if spec else "")

    def _trust(self) -> str:
        release_obj = files.read_json(self.paths.release_trust)
        if release_obj is None:
            raise ProvisioningError(
                f"the image has no release trust store at {self.paths.release_trust}",
                remedy="rebuild the rootfs with image/customize-rootfs.sh --release-trust FILE",
            )
        release = _trust_from(release_obj, self.paths.release_trust)
        current_obj = files.read_json(self.trust_path)
        current = (
            _trust_from(current_obj, self.trust_path)
            if current_obj is not None
            else TrustStore((), release.revoked, release.threshold)
        )
        merged = current
        for key in release.keys:
            if key.keyid not in merged.revoked:
                merged = merged.with_key(key.public, key.comment, role=key.role, models=key.models, device=key.device)
        if merged != current or current_obj is None:
            files.write_json(self.trust_path, merged.to_dict())
            return f"{len(merged.keys) - len(current.keys)} release key(s) added to {self.trust_path}"
        return f"{len(release.keys)} release key(s) already trusted"

    def _open_store(self) -> Store:
        device = self.summary.get("device_id")
        store = Store.open(self.root, trust_path=self.config.trust or None, device_id=device)
        store.good_provider = SlotStates(store.storage, store.limits).good_generations
        return store

    def _committed(self, store: Store) -> list[int]:
        return sorted(r.generation for r in scan(store.storage, store.limits).records if r.record is not None)

    def _factory(self) -> str:
        from appliance.transfer import import_checkpoint

        store = self._open_store()
        committed = self._committed(store)
        if committed:
            self.summary["factory_generation"] = committed[-1]
            return f"slots already hold generation {committed[-1]}; factory checkpoint not needed"
        if not (self.paths.factory / "bundles").is_dir():
            self.summary["factory_generation"] = None
            return f"no factory checkpoint in {self.paths.factory}: the node boots into recovery until one is imported"
        try:
            floor = open_floor(self.config).read()
        except FloorMissingError:
            floor = 0  # first boot: the "floor" step below provisions it; from then on missing fails closed
        if store.config.encrypt:
            return self._factory_sealed(store, floor)
        result = import_checkpoint(store, LocalStorage(self.paths.factory), floor=floor)
        self.summary["factory_generation"] = result.generation
        return f"generation {result.generation} imported into slot {result.slot} (verified)"

    def _factory_sealed(self, store: Store, floor: int) -> str:
        """A plain factory checkpoint is never copied into an encrypted store: re-sealed, device-signed."""
        from appliance.transfer.reseal import import_sealed

        key = self.keys.signing_key(DEVICE_KEY)
        done = import_sealed(store, LocalStorage(self.paths.factory), [key], floor=floor)
        self.summary["factory_generation"] = done["generation"]
        return (
            f"generation {done.get('source_generation', done['generation'])} imported into slot {done['slot']} "
            f"(verified), {done['mode']} as generation {done['generation']}"
        )

    def _key(self) -> str:
        public = self.keys.create_signing_key(DEVICE_KEY)
        self.summary["keyid"] = public.keyid
        return f"device key {public.keyid[:16]} ({self.keys.describe()['provider']})"

    def _register(self) -> str:
        public = self.keys.public_key(DEVICE_KEY)
        device_id = self._device_id()
        path = self.paths.etc / "device.json"
        old = files.read_json(path)
        identity = DeviceIdentity(device_id, public.keyid, str(self.keys.describe()["provider"]), _now())
        if old is None or _same_identity(DeviceIdentity.from_dict(old), identity) is False:
            files.write_json(path, identity.to_dict())
        trust = _trust_from(files.read_json(self.trust_path), self.trust_path)
        if trust.get(public.keyid) is None:
            device_key = trust.with_key(public, device_key_comment(device_id), role=DEVICE, device=device_id)
            files.write_json(self.trust_path, device_key.to_dict())
        self.summary.update(device_id=device_id, keyid=public.keyid)
        return f"device {device_id} key {public.keyid[:16]} role device"

    def _device_id(self) -> str:
        provisioning = self._provisioning_file()
        if provisioning is not None and provisioning.device_id:
            return provisioning.device_id
        old = files.read_json(self.paths.etc / "device.json")
        if old is not None:
            return DeviceIdentity.from_dict(old).device_id
        for source in (self.paths.serial, self.paths.machine_id):
            try:
                value = source.read_bytes()[:256].rstrip(b"\0\n ").decode("ascii", "replace")
            except OSError:
                continue
            if value:
                return check_device_id(value, str(source))
        raise ProvisioningError("no device id: no board serial number, no machine id, none in a provisioning file")

    def _provisioning_file(self) -> Provisioning | None:
        path = self.paths.provision_file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc
        return Provisioning.from_bytes(data, str(path))

    def _floor(self) -> str:
        generation = self.summary.get("factory_generation")
        if generation is None:
            committed = self._committed(self._open_store())
            generation = committed[-1] if committed else None
        if generation is None:
            return "no checkpoint: floor stays where it is"
        value = open_floor(self.config).raise_to(generation)
        return f"anti-rollback floor {value}"

    def _provisioning(self) -> str:
        provisioning = self._provisioning_file()
        if provisioning is None:
            return f"no provisioning file at {self.paths.provision_file}"
        gid = files.group_id()
        etc = self.paths.etc
        files.write_json(etc / "technicians.json", {"format": "appliance.technicians", "version": 1,
                         "technicians": [t.to_dict() for t in provisioning.technicians]}, 0o640, gid)  # fmt: skip
        for name, value in (("remote", provisioning.remote), ("channel", provisioning.channel)):
            if value is not None:
                files.write_json(etc / f"{name}.json", value, 0o640, gid)
        files.shred(self.paths.provision_file)
        applied = [n for n, v in (("remote", provisioning.remote), ("channel", provisioning.channel)) if v is not None]
        settings = "".join(f", {name}" for name in applied)
        return f"{len(provisioning.technicians)} technician(s){settings}; file shredded"

    def _done(self) -> str:
        self.summary["completed"] = _now()
        files.write_json(self.paths.done, self.summary)
        return f"node provisioned ({self.paths.done})"


def _trust_from(obj: object, path: Path) -> TrustStore:
    try:
        return TrustStore.from_dict(obj)
    except ApplianceError as exc:
        raise ProvisioningError(f"{path} is not a valid trust store: {exc.problem}") from exc


def _same_identity(a: DeviceIdentity, b: DeviceIdentity) -> bool:
    return (a.device_id, a.keyid, a.key_provider) == (b.device_id, b.keyid, b.key_provider)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
