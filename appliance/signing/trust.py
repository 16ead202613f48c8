"""The trust store: which public keys may sign checkpoints, which are revoked, how many must sign.

Owns: ``TrustStore`` and its JSON form. Does not own the file's location: in production it
lives on the verified, read-only root file system (docs/design.md §7); ``appliance init``
places one in the store root for development.

Rotation: add the new key (``with_key``), sign new checkpoints with it, then revoke the old
one (``revoked``). A revoked key id stays listed forever so it can never be re-added by mistake.

Key roles (format v2, docs/design.md §5.4): ``release`` keys may sign any checkpoint of the
model ids they list; ``device`` keys are bound to one device id and may sign only checkpoints
whose lineage reaches a release-signed checkpoint (``appliance.signing.lineage``). A key with
no role (every key of a v1 trust store) is *unrestricted*, as before roles existed. A trust
store is written as v1 while no key has a role, so existing stores keep their bytes.

Key entries are extensible by key type: each names its ``type`` (``ed25519``, ``ecdsa-p256``) and the
public key in that type's encoding; a reader refuses a type it does not know.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from typing import Any

from appliance.errors import TrustStoreError
from appliance.signing.keys import KEY_TYPES, PublicKey

TRUST_FORMAT = "appliance.trust"
TRUST_VERSION = 2  # v2: key roles and key types; v1 (role-less) is still read and written unchanged
TRUST_VERSIONS = (1, 2)
RELEASE, DEVICE = "release", "device"
ROLES = (RELEASE, DEVICE)
_LABEL_MAX = 256


@dataclass(frozen=True)
class TrustedKey:
    """A trusted public key and what it may sign.

    ``role``: ``None`` (unrestricted, v1), ``"release"`` (``models``: the model ids it may sign)
    or ``"device"`` (``device``: the one device id it is bound to).
    """

    public: PublicKey
    comment: str = ""
    role: str | None = None
    models: tuple[str, ...] = ()
    device: str | None = None

    def __post_init__(self) -> None:
        if self.role is None and (self.models or self.device is not None):
            raise TrustStoreError("a key without a role lists no models and no device")
        if self.role == RELEASE and (not self.models or self.device is not None):
            raise TrustStoreError("a release key lists the model ids it may sign, and no device")
        if self.role == DEVICE and (not self.device or self.models):
            raise TrustStoreError("a device key is bound to exactly one device id, and lists no models")
        if self.role is not None and self.role not in ROLES:
            raise TrustStoreError(f"key role must be one of {', '.join(ROLES)}, got {self.role!r:.40}")
        for label in (*self.models, *((self.device,) if self.device else ())):
            if not label or not label.isprintable() or len(label) > _LABEL_MAX:
                raise TrustStoreError(f"model and device ids are 1-{_LABEL_MAX} printable characters: {label!r:.60}")

    @property
    def keyid(self) -> str:
        return self.public.keyid

    @property
    def role_name(self) -> str:
        return self.role or "unrestricted"

    def may_sign_release_of(self, model: str) -> bool:
        """Whether this key's signature alone vouches for a checkpoint of ``model`` (no lineage needed)."""
        return self.role is None or (self.role == RELEASE and model in self.models)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "keyid": self.keyid,
            "type": self.public.type,
            "public": base64.b64encode(self.public.raw).decode(),
            "comment": self.comment,
        }
        if self.role is not None:
            out["role"] = self.role
        if self.role == RELEASE:
            out["models"] = list(self.models)
        if self.role == DEVICE:
            out["device"] = self.device
        return out

    def to_v1_dict(self) -> dict[str, Any]:
        raw = base64.b64encode(self.public.raw).decode()
        return {"keyid": self.keyid, self.public.type: raw, "comment": self.comment}  # the field names the type

    @classmethod
    def from_dict(cls, entry: Any, version: int) -> TrustedKey:
        if version == 1:
            key = cls(_v1_public_key(entry), str(entry.get("comment", "")))
        else:
            if entry["type"] not in KEY_TYPES:
                raise TrustStoreError(
                    f"trust store key type {entry['type']!r:.40} is not supported (this reader knows "
                    f"{', '.join(KEY_TYPES)})",
                    remedy="upgrade appliance on this node",
                )
            public = PublicKey(base64.b64decode(entry["public"], validate=True), entry["type"])
            models = entry.get("models", [])
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise TrustStoreError("trust store key models must be a list of model ids")
            device = entry.get("device")
            if device is not None and not isinstance(device, str):
                raise TrustStoreError("trust store key device must be a string")
            role = entry.get("role")
            if role is not None and not isinstance(role, str):
                raise TrustStoreError("trust store key role must be a string")
            key = cls(public, str(entry.get("comment", "")), role, tuple(models), device)
        if key.keyid != entry["keyid"]:
            raise TrustStoreError(f"trust store key id {str(entry['keyid'])[:12]} does not match its key")
        return key


@dataclass(frozen=True)
class TrustStore:
    """Trusted keys, revoked key ids, threshold; ``device``: this node's own device id, when known.

    ``device`` is not part of the file: the node sets it (``for_device``) from node.json or
    ``/etc/appliance/device.json``, and then device-role signatures count only from keys bound
    to that id (``appliance.signing.lineage``); another device's key is refused even if listed.
    """

    keys: tuple[TrustedKey, ...] = ()
    revoked: frozenset[str] = frozenset()
    threshold: int = 1
    device: str | None = None

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise TrustStoreError(f"threshold must be at least 1, got {self.threshold}")
        ids = [k.keyid for k in self.keys]
        if len(set(ids)) != len(ids):
            raise TrustStoreError("a key is listed twice in the trust store")
        if set(ids) & self.revoked:
            raise TrustStoreError("a key is both trusted and revoked")

    def get(self, keyid: str) -> PublicKey | None:
        entry = self.entry(keyid)
        return entry.public if entry is not None else None

    def entry(self, keyid: str) -> TrustedKey | None:
        for k in self.keys:
            if k.keyid == keyid:
                return k
        return None

    @property
    def has_roles(self) -> bool:
        return any(k.role is not None for k in self.keys)

    def with_key(
        self,
        key: PublicKey,
        comment: str = "",
        *,
        role: str | None = None,
        models: tuple[str, ...] = (),
        device: str | None = None,
    ) -> TrustStore:
        if key.keyid in self.revoked:
            raise TrustStoreError(f"key {key.keyid[:12]} was revoked and cannot be trusted again")
        if self.get(key.keyid) is not None:
            return self
        entry = TrustedKey(key, comment, role, models, device)
        return replace(self, keys=(*self.keys, entry))

    def with_role(
        self, keyid: str, role: str | None, *, models: tuple[str, ...] = (), device: str | None = None
    ) -> TrustStore:
        """The same store with ``keyid``'s role replaced (the v1 -> v2 migration step)."""
        old = self.entry(keyid)
        if old is None:
            raise TrustStoreError(f"key {keyid[:12]} is not in the trust store")
        new = TrustedKey(old.public, old.comment, role, models, device)
        return replace(self, keys=tuple(new if k.keyid == keyid else k for k in self.keys))

    def revoke(self, keyid: str) -> TrustStore:
        keys = tuple(k for k in self.keys if k.keyid != keyid)
        if len(keys) == len(self.keys) and keyid not in self.revoked:
            raise TrustStoreError(f"key {keyid[:12]} is not in the trust store")
        return replace(self, keys=keys, revoked=self.revoked | {keyid})

    def for_device(self, device: str | None) -> TrustStore:
        """The same keys, as seen by the node whose device id is ``device``."""
        return replace(self, device=device)

    @property
    def device_ids(self) -> frozenset[str]:
        """The device ids the device-role keys are bound to."""
        return frozenset(str(k.device) for k in self.keys if k.role == DEVICE)

    def to_dict(self) -> dict[str, Any]:
        if not self.has_roles:  # written as before roles existed: old readers keep reading it
            return {
                "format": TRUST_FORMAT,
                "version": 1,
                "threshold": self.threshold,
                "keys": [k.to_v1_dict() for k in self.keys],
                "revoked": sorted(self.revoked),
            }
        return {
            "format": TRUST_FORMAT,
            "version": TRUST_VERSION,
            "threshold": self.threshold,
            "keys": [k.to_dict() for k in self.keys],
            "revoked": sorted(self.revoked),
        }

    @classmethod
    def from_dict(cls, obj: Any) -> TrustStore:
        try:
            if obj["format"] != TRUST_FORMAT or obj["version"] not in TRUST_VERSIONS:
                raise TrustStoreError(
                    f"not a v1 or v2 trust store (format {str(obj.get('format'))[:40]!r}, "
                    f"version {str(obj.get('version'))[:20]})"
                )
            version = obj["version"]
            keys = [TrustedKey.from_dict(entry, version) for entry in obj["keys"]]
            revoked = frozenset(str(k) for k in obj["revoked"])
            threshold = obj["threshold"]
            if not isinstance(threshold, int):
                raise TrustStoreError("trust store threshold must be an integer")
        except (KeyError, TypeError, binascii.Error, AttributeError) as exc:
            raise TrustStoreError(f"trust store is malformed: {exc!r}") from exc
        except TrustStoreError:
            raise
        except Exception as exc:  # a key that cryptography rejects, e.g. wrong length
            raise TrustStoreError(f"trust store is malformed: {exc}") from exc
        return cls(tuple(keys), revoked, threshold)


def _v1_public_key(entry: Any) -> PublicKey:
    """A v1 key entry's public key: exactly one field named after its type (``ed25519``, ``ecdsa-p256``)."""
    types = [t for t in KEY_TYPES if t in entry]
    if len(types) != 1:
        raise TrustStoreError(f"a trust store key entry names exactly one key type ({', '.join(KEY_TYPES)})")
    return PublicKey(base64.b64decode(entry[types[0]], validate=True), types[0])
