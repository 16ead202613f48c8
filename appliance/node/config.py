"""Node configuration (``node.json``): where one appliance's store, run files and service live.

Owns: ``NodeConfig``, its JSON form and loading it (relative paths are resolved against the
file's directory, so a development node directory can be moved). Does not own the store's
own configuration (``store.json``) or the supervisord/systemd files that point at it.

Every long-running command (``appliance boot | serve | persist | guard``) takes
``--config NODE.json``; production uses ``/etc/appliance/node.json`` (see ``systemd/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, ConfigError, ManifestError, TrustLocationError
from appliance.format.canonical import canonical_bytes, require_keys, strict_loads
from appliance.format.crypto import KEK_SPEC_HELP, kek_spec_path, kek_spec_problem
from appliance.limits import DEFAULT_LIMITS

CONFIG_FORMAT = "appliance.node"
CONFIG_VERSION = 1
MODEL_INIT = ("factory", "meta")  # how the service builds the model before the restore (service/loader.py)
_PATHS = (
    "store", "run_dir", "outbox", "event_log", "signing_key", "floor_file", "supervisor_socket", "trust",
    "adapt_token_file", "journal_dir", "journal_key", "channel_inbox",
)  # fmt: skip
CONTROL_SOCKET = "control.sock"
DEVICE_FILE = "device.json"  # first boot's device identity, next to node.json (/etc/appliance)


@dataclass(frozen=True)
class NodeConfig:
    store: str = "/var/lib/appliance"  # store root; slots A/B are mounted at STORE/A and STORE/B
    model: str = "appliance.models.demo:build"  # entry point: package.module:factory -> nn.Module
    run_dir: str = "/run/appliance"  # handoff, service report, boot lock, recovery file
    outbox: str = "/var/lib/appliance-outbox"  # state exports waiting to be committed
    event_log: str = "/var/log/appliance/events.jsonl"
    signing_key: str = "/etc/appliance/device.key"  # device key that signs persisted deltas
    floor_file: str = "/var/lib/appliance-floor/floor.json"  # file-backed anti-rollback floor
    floor_provider: str = ""  # optional entry point of a GenerationFloor (secure storage on Jetson)
    key_provider: str = ""  # optional entry point of a KeyProvider (OP-TEE/TPM); "" = 0400 files (node/keyprovider.py)
    supervisor_socket: str = "/run/appliance-supervisor/supervisor.sock"  # boot's alone (privileges)
    trust: str = ""  # trust store override; "" = the store's own trust.json (development only)
    host: str = "127.0.0.1"
    port: int = 8470
    service_program: str = "model"  # supervisord program names
    persist_program: str = "persist"
    persist_interval: float = 300.0  # seconds between scheduled exports (node.json "auto": persist_auto)
    persist_auto: bool = False  # node.json persist_interval "auto": Young/Daly from measured costs (issue 17)
    persist_keep_bytes: int = 8 << 30  # raw state the watchdog keeps between commits (0: none; store/lastcommit.py)
    persist_nice: int = 10  # watchdog niceness 0..19; I/O best-effort level (nice+20)//5 (node/priority.py)
    max_boot_attempts: int = 3
    ready_timeout: float = 600.0  # seconds a restore may take before the candidate is abandoned
    require_mounts: bool = False  # slots must be mount points (production); a bare directory is "unmounted"
    restore_workers: int = 0  # 0 = one per CPU
    model_init: str = "factory"  # "meta": skip the factory's weight initialisation at boot (service/loader.py)
    # --- trust boundary (docs/design.md "Threat model"): the network listener and the control channel ---
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")  # Host header allowlist (DNS rebinding)
    control_users: tuple[str, ...] = ("appliance-boot", "appliance-persist")  # may admit, canary, export
    adapt_users: tuple[str, ...] = ()  # local users who may adapt over the control channel (root always may)
    network_adapt: bool = False  # offer POST /v1/adapt on the network listener (bearer token, rate-limited)
    adapt_token_file: str = ""  # with network_adapt: file holding the bearer token (0600/0640)
    adapt_per_minute: int = 30  # with network_adapt: accepted adaptation requests per minute
    max_body_bytes: int = 1 << 20  # largest request body either listener reads
    max_batch: int = 256  # rows per inference/adaptation request
    max_row: int = 65536  # numbers per row
    max_connections: int = 64  # open network connections; more are closed at once
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers
    crash_decay_s: float = 3600.0  # a GOOD slot serving this long without a crash forgets earlier crashes
    port_wait_s: float = 120.0  # boot waits this long, with backoff, for a service port held by someone else
    # --- adaptation journal (issue 17, docs/design.md §15): "" = no journal, a power cut loses unpersisted steps ---
    journal_dir: str = ""  # segments of the journal (the service's user only, 0700)
    journal_key: str = ""  # its MAC key (0400, the service's user); "" = journal.key beside signing_key
    journal_group_commit_ms: float = 10.0  # the longest a step waits for its group's fsync (plus the fsync)
    journal_max_bytes: int = 64 << 20  # at this size the service forces a persist; at twice it adaptation waits
    adapt_threads: int = 1  # torch intra-op threads of every adaptation step (replay uses the same)
    max_replay_s: float = 30.0  # persist_interval "auto" keeps the expected replay at boot below this
    flash_budget_bytes_per_day: int = 0  # persist_interval "auto": bytes/day persists may write (0 = no bound)
    # This node's device id (issue 10): "" = read DIR_OF_NODE_JSON/device.json, which first boot writes.
    # Device-role signatures count only from the key bound to this id (appliance.node.identity).
    device_id: str = ""
    # The recovery console's privileged action channel (appliance/console/actiond.py): callers it serves.
    console_users: tuple[str, ...] = ("appliance-console",)
    # May read the service's Prometheus metrics on the control socket (GET /v1/metrics), besides control_users.
    metrics_users: tuple[str, ...] = ("appliance-console",)
    # The fleet channel's hand-off (docs/design.md §11.6): "" = `appliance channel follow` imports into the store
    # itself (a single-user development node); a directory = the channel program (appliance-channel) only stages
    # releases there and the persistence watchdog, the store's only writer, imports them (production).
    channel_inbox: str = ""
    # Who stages into channel_inbox (docs/design.md §7.2): the importer refuses an inbox (or a file in it) owned by
    # anyone but this user, itself or root, or writable by its group or others (InboxPermissionError, 90).
    channel_user: str = "appliance-channel"
    # Encryption at rest (issue 18, docs/design.md §14): first boot creates the store encrypted, its data key
    # wrapped under this KEK ("file:PATH" | "systemd-creds:PATH" | "entry-point:pkg.mod:factory", the spelling
    # of `appliance init --kek`; a missing file or credential is created). "" = a plain store. Read by first
    # boot only: afterwards the store's keyring names its KEK.
    encrypt_kek: str = ""

    def __post_init__(self) -> None:
        if ":" not in self.model:
            raise ConfigError(f"model must be an entry point 'package.module:factory', got {self.model!r:.80}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {self.port}")
        if not 1 <= self.max_boot_attempts <= 100:
            raise ConfigError("max_boot_attempts must be 1..100")
        if self.persist_interval <= 0 or self.ready_timeout <= 0:
            raise ConfigError("persist_interval and ready_timeout must be positive")
        if self.persist_keep_bytes < 0 or not 0 <= self.persist_nice <= 19:
            raise ConfigError("persist_keep_bytes must be >= 0 and persist_nice 0..19")
        _check_caps(self)
        _check_journal(self)
        _check_kek(self)
        if not self.channel_user or "/" in self.channel_user or ":" in self.channel_user:
            raise ConfigError(f"channel_user must be a user name, got {self.channel_user!r:.40}")
        if self.model_init not in MODEL_INIT:
            raise ConfigError(f"model_init must be one of {', '.join(MODEL_INIT)}, got {self.model_init!r:.40}")

    @property
    def service_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def trust_file(self) -> str | None:
        """The trust store every daemon opens (``None``: the store's own ``trust.json``).

        Fail closed in production: with ``require_mounts`` the trust store must live outside the
        store and its slot partitions (on the read-only rootfs, ``/etc/appliance/trust.json``);
        an offline storage attacker who could add a key there would have the persistence
        watchdog re-sign whatever the service holds. Raises ``TrustLocationError`` (24).
        """
        if not self.require_mounts:
            return self.trust or None
        if not self.trust:
            raise TrustLocationError(
                "node.json names no trust store, so the store's own trust.json on the writable store partition "
                "would decide which keys are trusted"
            )
        trust, store = os.path.realpath(self.trust), os.path.realpath(self.store)
        if trust == store or trust.startswith(store.rstrip(os.sep) + os.sep):
            raise TrustLocationError(
                f"trust store {self.trust} lies inside the store {self.store} (its writable slot partitions): "
                "whoever can write the disk could add a signing key"
            )
        return self.trust

    def journal_key_file(self) -> str:
        """The journal MAC key: ``journal_key``, else ``journal.key`` beside the device signing key."""
        return self.journal_key or str(Path(self.signing_key).parent / "journal.key")

    @property
    def control_socket(self) -> str:
        """The service's control channel: ``RUN/control.sock`` (mode 0660, group ``appliance``)."""
        return str(Path(self.run_dir) / CONTROL_SOCKET)

    def path(self, name: str) -> Path:
        return Path(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if out.pop("persist_auto"):
            out["persist_interval"] = "auto"
        return out

    @classmethod
    def from_dict(cls, obj: object, base: Path | None = None) -> NodeConfig:
        names = {f.name for f in fields(cls)}
        try:
            d = require_keys(obj, "node.json", {"format", "version"}, frozenset(names))
        except ManifestError as exc:
            raise ConfigError(f"node.json is invalid: {exc.problem}") from exc
        if d["format"] != CONFIG_FORMAT or d["version"] != CONFIG_VERSION:
            raise ConfigError("node.json is not a v1 node configuration")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        if values.get("persist_interval") == "auto":  # chosen at run time (appliance.persist.interval)
            values["persist_interval"], values["persist_auto"] = 300.0, True
        for f in fields(cls):
            if f.name in values and not _type_ok(values[f.name], f.default):
                raise ConfigError(f"node.json field {f.name} has the wrong type ({type(values[f.name]).__name__})")
        config = cls(**values)
        return config.resolved(base) if base is not None else config

    def resolved(self, base: Path) -> NodeConfig:
        """Relative paths made absolute against ``base`` (the config file's directory)."""
        changes: dict[str, Any] = {
            name: _absolute(base / value, follow_last=name != "channel_inbox")
            for name in _PATHS
            if (value := getattr(self, name)) and not Path(value).is_absolute()
        }
        kek_path = kek_spec_path(self.encrypt_kek)
        if kek_path and not Path(kek_path).is_absolute():
            provider = self.encrypt_kek.partition(":")[0]
            changes["encrypt_kek"] = f"{provider}:{(base / kek_path).resolve()}"
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_dict()) + b"\n"


def _absolute(path: Path, *, follow_last: bool) -> str:
    """``path`` made absolute, symbolic links resolved; ``follow_last=False``: not its last component (the
    channel inbox: the persistence watchdog refuses an inbox that is a link, naming the path as configured)."""
    if follow_last or path.name in ("", ".", ".."):
        return str(path.resolve())
    return str(path.parent.resolve() / path.name)


def _type_ok(value: object, default: object) -> bool:
    if isinstance(default, tuple):
        return isinstance(value, tuple) and all(isinstance(v, str) and 0 < len(v) <= 253 for v in value)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return type(value) is type(default)


def _check_caps(c: NodeConfig) -> None:
    if not 1024 <= c.max_body_bytes <= 1 << 30:
        raise ConfigError("max_body_bytes must be 1024..1073741824")
    if not (1 <= c.max_batch <= 1 << 20 and 1 <= c.max_row <= 1 << 24):
        raise ConfigError("max_batch must be 1..1048576 and max_row 1..16777216")
    if not 1 <= c.max_connections <= 65536 or not 1 <= c.adapt_per_minute <= 100000:
        raise ConfigError("max_connections must be 1..65536 and adapt_per_minute 1..100000")
    if not (0 < c.header_timeout <= 3600 and c.crash_decay_s > 0 and c.port_wait_s >= 0):
        raise ConfigError("header_timeout must be 0..3600 s, crash_decay_s positive, port_wait_s not negative")
    if c.network_adapt and not c.adapt_token_file:
        raise ConfigError(
            "network_adapt needs adapt_token_file (a bearer token only adaptation clients know)",
            remedy="set adapt_token_file in node.json, or leave network_adapt false (the default)",
        )


def _check_journal(c: NodeConfig) -> None:
    if not (0 <= c.journal_group_commit_ms <= 1000 and 1 << 16 <= c.journal_max_bytes <= 1 << 40):
        raise ConfigError("journal_group_commit_ms must be 0..1000 and journal_max_bytes 65536..2^40")
    if not (1 <= c.adapt_threads <= 256 and c.max_replay_s > 0 and c.flash_budget_bytes_per_day >= 0):
        raise ConfigError("adapt_threads must be 1..256, max_replay_s positive, flash_budget_bytes_per_day >= 0")


def _check_kek(c: NodeConfig) -> None:
    if not c.encrypt_kek:
        return
    problem = kek_spec_problem(c.encrypt_kek)
    if problem is not None:
        raise ConfigError(
            f"node.json encrypt_kek {c.encrypt_kek!r:.80} {problem}",
            remedy=f"set encrypt_kek to {KEK_SPEC_HELP}, or leave it out for a plain store",
        )
    path = kek_spec_path(c.encrypt_kek)
    if path and Path(path).is_absolute() and Path(c.store).is_absolute():
        kek, store = os.path.normpath(path), os.path.normpath(c.store)
        if kek == store or kek.startswith(store.rstrip(os.sep) + os.sep):
            raise ConfigError(
                f"node.json encrypt_kek {path} lies inside the store {c.store}: whoever reads the disk reads the key",
                remedy="keep the KEK outside the store and its slot partitions (e.g. /etc/appliance/store.kek)",
            )


def _with_device_id(config: NodeConfig, identity: Path) -> NodeConfig:
    """``config`` with its device id: node.json's own, else the identity file first boot wrote."""
    from appliance.errors import DeviceIdentityError
    from appliance.format.provisioning import DeviceIdentity, check_device_id

    try:
        if config.device_id:
            return replace(config, device_id=check_device_id(config.device_id, "node.json device_id"))
        try:
            data = identity.read_bytes()[: DEFAULT_LIMITS.config_max_bytes]
        except FileNotFoundError:
            return config
        obj = strict_loads(data, what=str(identity), max_bytes=DEFAULT_LIMITS.config_max_bytes, max_depth=4)
        return replace(config, device_id=DeviceIdentity.from_dict(obj).device_id)
    except (OSError, ApplianceError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise DeviceIdentityError(f"this node's device id cannot be read: {problem}") from exc


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(DEFAULT_LIMITS.config_max_bytes + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read node configuration {path}: {exc.strerror or exc}",
            remedy="pass --config NODE.json (create a development node with `appliance node-init DIR`)",
        ) from exc
    try:
        obj = strict_loads(data, what=str(path), max_bytes=DEFAULT_LIMITS.config_max_bytes, max_depth=4)
    except ApplianceError as exc:
        raise ConfigError(f"node configuration {path} is damaged: {exc.problem}") from exc
    config = NodeConfig.from_dict(obj, base=path.parent.resolve())
    config = _with_device_id(config, path.parent / DEVICE_FILE)
    config.trust_file()  # refuse a production trust store on the store partition before anything runs
    return config
