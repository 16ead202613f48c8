"""The trust store: which public keys may sign checkpoints, which are revoked, how many must sign.

Owns: ``TrustStore`` and its JSON form. Does not own the file's location: in production it
lives on the verified, read-only root file system (docs/design.md §7); ``appliance init``
places one in the store root for development.

Rotation: add the new key (``with_key``), sign new checkpoints with it, then revoke the old
one (``revoked``). A revoked key id stays listed forever so it can never be re-added by mistake.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from appliance.errors import TrustStoreError
from appliance.signing.keys import KEY_TYPES, PublicKey

TRUST_FORMAT = "appliance.trust"
TRUST_VERSION = 1


@dataclass(frozen=True)
class TrustedKey:
    public: PublicKey
    comment: str = ""

    @property
    def keyid(self) -> str:
        return self.public.keyid


@dataclass(frozen=True)
class TrustStore:
    keys: tuple[TrustedKey, ...] = ()
    revoked: frozenset[str] = frozenset()
    threshold: int = 1

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise TrustStoreError(f"threshold must be at least 1, got {self.threshold}")
        ids = [k.keyid for k in self.keys]
        if len(set(ids)) != len(ids):
            raise TrustStoreError("a key is listed twice in the trust store")
        if set(ids) & self.revoked:
            raise TrustStoreError("a key is both trusted and revoked")

    def get(self, keyid: str) -> PublicKey | None:
        for k in self.keys:
            if k.keyid == keyid:
                return k.public
        return None

    def with_key(self, key: PublicKey, comment: str = "") -> TrustStore:
        if key.keyid in self.revoked:
            raise TrustStoreError(f"key {key.keyid[:12]} was revoked and cannot be trusted again")
        if self.get(key.keyid) is not None:
            return self
        return TrustStore((*self.keys, TrustedKey(key, comment)), self.revoked, self.threshold)

    def revoke(self, keyid: str) -> TrustStore:
        keys = tuple(k for k in self.keys if k.keyid != keyid)
        if len(keys) == len(self.keys) and keyid not in self.revoked:
            raise TrustStoreError(f"key {keyid[:12]} is not in the trust store")
        return TrustStore(keys, self.revoked | {keyid}, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRUST_FORMAT,
            "version": TRUST_VERSION,
            "threshold": self.threshold,
            "keys": [
                {
                    "keyid": k.keyid,
                    k.public.type: base64.b64encode(k.public.raw).decode(),  # the field names the key type
                    "comment": k.comment,
                }
                for k in self.keys
            ],
            "revoked": sorted(self.revoked),
        }

    @classmethod
    def from_dict(cls, obj: Any) -> TrustStore:
        try:
            if obj["format"] != TRUST_FORMAT or obj["version"] != TRUST_VERSION:
                raise TrustStoreError("not a v1 trust store")
            keys = []
            for entry in obj["keys"]:
                public = _public_key(entry)
                if public.keyid != entry["keyid"]:
                    raise TrustStoreError(f"trust store key id {entry['keyid'][:12]} does not match its key")
                keys.append(TrustedKey(public, str(entry.get("comment", ""))))
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


def _public_key(entry: Any) -> PublicKey:
    """A key entry's public key: exactly one field named after its type (``ed25519``, ``ecdsa-p256``)."""
    types = [t for t in KEY_TYPES if t in entry]
    if len(types) != 1:
        raise TrustStoreError(f"a trust store key entry names exactly one key type ({', '.join(KEY_TYPES)})")
    return PublicKey(base64.b64decode(entry[types[0]], validate=True), types[0])
