"""``remote.json``: where a node replicates to (and restores or subscribes from), and how.

Owns: ``RemoteConfig`` (fields, defaults, validation, JSON form) and ``Credentials`` (read from a
separate file readable only by the users that need it). Does not own talking to the store
(``appliance.remote.s3``).

The access key never sits in ``remote.json`` (world-readable config): ``credentials`` names a
file ``{"access_key_id": ..., "secret_access_key": ...}`` with mode 0600 or 0640, owned by
``appliance-replicate`` (group ``appliance`` for boot's read-only restore).
"""

from __future__ import annotations

import json
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError
from appliance.format.remote import check_name

REMOTE_FORMAT = "appliance.remote"
REMOTE_VERSION = 1


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        path = Path(path)
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"credentials file {path} is not a regular file")
            if st.st_mode & 0o007:
                raise ConfigError(
                    f"credentials file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
                    remedy=f"chmod 0600 {path} (or 0640 with group appliance)",
                )
            obj = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(f"credentials file {path} is not JSON: {exc}") from exc
        if not isinstance(obj, dict) or set(obj) != {"access_key_id", "secret_access_key"}:
            raise ConfigError(f"credentials file {path} must hold exactly access_key_id and secret_access_key")
        if not all(isinstance(v, str) and 1 <= len(v) <= 256 for v in obj.values()):
            raise ConfigError(f"credentials in {path} must be non-empty strings")
        return cls(obj["access_key_id"], obj["secret_access_key"])


@dataclass(frozen=True)
class RemoteConfig:
    endpoint: str  # http(s)://host:port of the S3-compatible service
    bucket: str
    device: str  # this node's name: its replica lives under <prefix>/devices/<device>/
    credentials: str  # path of the credentials file
    prefix: str = "appliance"
    region: str = "us-east-1"
    head_key: str = ""  # private key that signs this node's heads (replicate only)
    head_trust: tuple[str, ...] = ()  # public keys whose device heads this node accepts when restoring
    state_dir: str = "/var/lib/appliance-replicate"  # durable queue, last head seen, metrics
    bandwidth_limit: int = 0  # bytes per second for uploads; 0 = unlimited
    poll_interval: float = 30.0  # seconds between scans of the store
    retry_base: float = 2.0  # seconds; backoff doubles per failed attempt, full jitter
    retry_cap: float = 600.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 4  # per request, inside the S3 client (standard retry mode)
    restore_at_boot: bool = True  # boot restores from here when no local checkpoint is valid
    channel: str = ""  # fleet channel this node follows ("" = none): <prefix>/channels/<channel>/
    # legacy pin (before key roles): if set, the channel accepts only these keys, each of which must be a
    # release key of the model in the node's trust store; empty = every such release key (docs/design.md §11.6)
    channel_trust: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"remote endpoint must be an http(s) URL, got {self.endpoint!r:.80}")
        if not 3 <= len(self.bucket) <= 63:
            raise ConfigError("remote bucket name must be 3..63 characters")
        try:
            check_name(self.device, "remote device")
            for part in self.prefix.split("/"):
                check_name(part, "remote prefix component")
            if self.channel:
                check_name(self.channel, "remote channel")
        except Exception as exc:
            raise ConfigError(str(getattr(exc, "problem", exc))) from exc
        if self.bandwidth_limit < 0 or self.poll_interval <= 0 or self.retry_base <= 0 or self.retry_cap <= 0:
            raise ConfigError("bandwidth_limit must be >= 0; poll_interval and retry times > 0")
        if not 1 <= self.max_attempts <= 20:
            raise ConfigError("max_attempts must be 1..20")

    @property
    def device_prefix(self) -> str:
        return f"{self.prefix}/devices/{self.device}"

    def channel_prefix(self, channel: str | None = None) -> str:
        return f"{self.prefix}/channels/{check_name(channel or self.channel, 'channel')}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": REMOTE_FORMAT, "version": REMOTE_VERSION, **asdict(self)}
        out["head_trust"] = list(self.head_trust)
        out["channel_trust"] = list(self.channel_trust)
        return out

    @classmethod
    def from_dict(cls, obj: object, base: Path | None = None) -> RemoteConfig:
        if not isinstance(obj, dict) or obj.get("format") != REMOTE_FORMAT or obj.get("version") != REMOTE_VERSION:
            raise ConfigError(f"not a {REMOTE_FORMAT} v{REMOTE_VERSION} file")
        fields = {k: v for k, v in obj.items() if k not in ("format", "version")}
        known = set(cls.__dataclass_fields__)
        unknown = set(fields) - known
        if unknown:
            raise ConfigError(f"remote.json has unknown fields: {', '.join(sorted(unknown))}")
        for name in ("head_trust", "channel_trust"):
            if name in fields:
                fields[name] = tuple(fields[name])
        try:
            config = cls(**fields)
        except TypeError as exc:
            raise ConfigError(f"remote.json is incomplete or mistyped: {exc}") from exc
        return config.resolved(base) if base else config

    def resolved(self, base: Path) -> RemoteConfig:
        def r(p: str) -> str:
            return str(base / p) if p and not Path(p).is_absolute() else p

        return RemoteConfig(**{
            **asdict(self),
            "credentials": r(self.credentials),
            "head_key": r(self.head_key),
            "head_trust": tuple(r(p) for p in self.head_trust),
            "channel_trust": tuple(r(p) for p in self.channel_trust),
            "state_dir": r(self.state_dir),
        })  # fmt: skip


def load_remote(path: str | Path) -> RemoteConfig:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from exc
    return RemoteConfig.from_dict(obj, base=path.parent)
