"""Encryption at rest: sealing frames under a per-store data key, wrapped by a key-encryption key.

The rules (hierarchy, labels, associated data, nonces, keyring form) are ``appliance.format.crypto``;
this package applies them with ``cryptography`` (``aead``) and obtains KEKs from providers (``kek``).
Reading and writing the keyring belongs to the store (``appliance.store.keys``).
"""

from appliance.crypto.aead import FrameCipher, JournalSeal, kek_check, new_data_key, unwrap_data_key, wrap_data_key
from appliance.crypto.kek import (
    EntryPointKek,
    FileKek,
    KekSource,
    SystemdCredsKek,
    create_missing,
    kek_source,
    parse_kek_option,
)

__all__ = [
    "EntryPointKek",
    "FileKek",
    "FrameCipher",
    "JournalSeal",
    "KekSource",
    "SystemdCredsKek",
    "create_missing",
    "kek_check",
    "kek_source",
    "new_data_key",
    "parse_kek_option",
    "unwrap_data_key",
    "wrap_data_key",
]
