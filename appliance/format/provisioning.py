"""First boot's pure rules: the one-shot provisioning file, the device identity, the step order.

Owns: parsing the provisioning file (``/etc/appliance/provision.json``, docs/image.md §4.3) into
``Provisioning`` with every field checked; ``DeviceIdentity`` (``/etc/appliance/device.json``); the
first-boot steps in their order (``STEPS``) and how a device id is validated. Does no I/O: the
first-boot runner (``appliance.provision``) reads, writes and shreds the files.

Provisioning file (canonical or plain JSON, at most 64 KiB)::

    {"format": "appliance.provision", "version": 1,
     "device_id": "orin-0042",                       optional: else the board serial / machine id
     "technicians": [{"name": "ana", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$..."}],
     "remote": {...},                                optional: remote replication settings (opaque here)
     "channel": {...}}                               optional: fleet channel settings (opaque here)

Technician passwords arrive hashed (PHC string format: ``$argon2id$``, ``$scrypt$``, ``$pbkdf2-sha256$``
...); a plaintext ``password`` is refused, so no password ever rests on the disk. ``remote`` and
``channel`` are kept as given (JSON objects, depth <= 6) for the components that own them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, ProvisioningError
from appliance.format.canonical import get_str, json_depth, require_keys, strict_loads

PROVISION_FORMAT = "appliance.provision"
DEVICE_FORMAT = "appliance.device"
VERSION = 1
PROVISION_MAX_BYTES = 64 * 1024
MAX_TECHNICIANS = 32
SETTINGS_MAX_DEPTH = 6

# First boot, in order. "format" runs before the slot mounts; the rest after (docs/image.md §4).
STEPS = ("format", "mounts", "store", "trust", "key", "register", "factory", "floor", "provision", "done")

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PHC = re.compile(r"\$[a-z0-9-]{1,32}(\$[A-Za-z0-9+/=,.-]{1,256}){1,6}")


def check_device_id(value: str, source: str) -> str:
    value = value.strip()
    if not _DEVICE_ID.fullmatch(value):
        raise ProvisioningError(
            f"device id {value!r:.80} from {source} is not 1-64 characters of A-Z a-z 0-9 . _ -",
            remedy="set device_id in the provisioning file",
        )
    return value


@dataclass(frozen=True)
class Technician:
    name: str
    password_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "password_hash": self.password_hash}


@dataclass(frozen=True)
class Provisioning:
    device_id: str | None = None
    technicians: tuple[Technician, ...] = ()
    remote: dict[str, Any] | None = field(default=None, hash=False)
    channel: dict[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "provisioning file") -> Provisioning:
        try:
            obj = strict_loads(data, what=source, max_bytes=PROVISION_MAX_BYTES, max_depth=SETTINGS_MAX_DEPTH + 2)
            d = require_keys(
                obj, source, {"format", "version"}, frozenset({"device_id", "technicians", "remote", "channel"})
            )
        except ProvisioningError:
            raise
        except ApplianceError as exc:
            raise ProvisioningError(f"{source} is not valid: {exc.problem}", remedy=_FIX) from exc
        if d["format"] != PROVISION_FORMAT or d["version"] != VERSION:
            raise ProvisioningError(
                f"{source} is not a v1 provisioning file (format {PROVISION_FORMAT!r})", remedy=_FIX
            )
        device_id = None
        if "device_id" in d:
            if not isinstance(d["device_id"], str):
                raise ProvisioningError(f"{source}: device_id must be a string", remedy=_FIX)
            device_id = check_device_id(d["device_id"], source)
        return cls(
            device_id=device_id,
            technicians=_technicians(d.get("technicians", []), source),
            remote=_settings(d, "remote", source),
            channel=_settings(d, "channel", source),
        )


_FIX = "rewrite the provisioning file (docs/image.md §4.3); it is kept until it applies"


def _technicians(value: object, source: str) -> tuple[Technician, ...]:
    if not isinstance(value, list) or len(value) > MAX_TECHNICIANS:
        raise ProvisioningError(f"{source}: technicians must be a list of at most {MAX_TECHNICIANS}", remedy=_FIX)
    out: list[Technician] = []
    for i, item in enumerate(value):
        what = f"{source}: technicians[{i}]"
        if isinstance(item, dict) and "password" in item:
            raise ProvisioningError(
                f"{what} carries a plaintext password; provisioning files carry hashes only",
                remedy="replace password with password_hash (a PHC string, e.g. from argon2-cffi's PasswordHasher)",
            )
        try:
            t = require_keys(item, what, {"name", "password_hash"})
            name, hashed = get_str(t, "name", what, 32), get_str(t, "password_hash", what, 512)
        except ApplianceError as exc:
            raise ProvisioningError(exc.problem, remedy=_FIX) from exc
        if not _USER.fullmatch(name):
            raise ProvisioningError(f"{what}.name {name!r:.40} is not a user name ([a-z_][a-z0-9_-]*)", remedy=_FIX)
        if not _PHC.fullmatch(hashed):
            raise ProvisioningError(f"{what}.password_hash is not a PHC hash string ($id$...)", remedy=_FIX)
        if any(o.name == name for o in out):
            raise ProvisioningError(f"{what}: technician {name!r} is listed twice", remedy=_FIX)
        out.append(Technician(name, hashed))
    return tuple(out)


def _settings(d: dict[str, Any], key: str, source: str) -> dict[str, Any] | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or json_depth(value) > SETTINGS_MAX_DEPTH:
        raise ProvisioningError(f"{source}: {key} must be a JSON object nested at most {SETTINGS_MAX_DEPTH} deep")
    return value


@dataclass(frozen=True)
class DeviceIdentity:
    """Who this node is: its device id, the key it signs with, and that key's role."""

    device_id: str
    keyid: str
    key_provider: str
    created: str
    role: str = "device"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": DEVICE_FORMAT,
            "version": VERSION,
            "device_id": self.device_id,
            "keyid": self.keyid,
            "role": self.role,
            "key_provider": self.key_provider,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, obj: object) -> DeviceIdentity:
        try:
            d = require_keys(
                obj, "device.json", {"format", "version", "device_id", "keyid", "role", "key_provider", "created"}
            )
            if d["format"] != DEVICE_FORMAT or d["version"] != VERSION:
                raise ProvisioningError("device.json is not a v1 device identity")
            return cls(
                device_id=check_device_id(get_str(d, "device_id", "device.json", 64), "device.json"),
                keyid=get_str(d, "keyid", "device.json", 128),
                key_provider=get_str(d, "key_provider", "device.json", 64),
                created=get_str(d, "created", "device.json", 64),
                role=get_str(d, "role", "device.json", 32),
            )
        except ProvisioningError:
            raise
        except ApplianceError as exc:
            raise ProvisioningError(f"device.json is damaged: {exc.problem}") from exc


def device_key_comment(device_id: str) -> str:
    """The trust-store comment that registers a device key (role and device id; docs/image.md §4.2)."""
    return f"role=device device_id={device_id}"
