"""The store's keyring on disk: creating, reading, unwrapping, re-wrapping and crypto-erasing it.

Owns: ``ROOT/keyring.json`` and its copy ``ROOT/keyring.copy.json`` (identical, written one
after the other, each durably; a reader takes the first that parses), the crypto-erase marker
``ROOT/erased.json``, and ``StoreKeys`` — the per-``Storage`` cache of unwrapped data keys that
every frame reader and writer asks (``cipher_for``). Does not own the cryptography
(``appliance.crypto``) or its rules (``appliance.format.crypto``).

Errors (the key group, all node faults): no keyring but sealed checkpoints -> ``KeyUnavailableError``
(55); a KEK that is not the keyring's or a keyring that does not unwrap -> ``WrongKeyError`` (56);
an erased store -> ``CryptoErasedError`` (57).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace

from appliance.crypto import FrameCipher, KekSource, kek_check, kek_source, new_data_key, unwrap_data_key, wrap_data_key
from appliance.errors import (
    ApplianceError,
    CryptoErasedError,
    KeyUnavailableError,
    StorageError,
    WrongKeyError,
)
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.crypto import Encryption, Keyring
from appliance.storage import Storage, write_durable

KEYRING = "keyring.json"
KEYRING_COPY = "keyring.copy.json"
ERASED = "erased.json"
KEYRING_MAX_BYTES = 64 * 1024


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_keyring(storage: Storage) -> Keyring | None:
    """The keyring (first copy that parses); None when the store has none (plain, or erased)."""
    damaged: list[str] = []
    for path in (KEYRING, KEYRING_COPY):
        try:
            data = storage.read(path, KEYRING_MAX_BYTES)
        except FileNotFoundError:
            continue
        except (ApplianceError, StorageError) as exc:
            damaged.append(f"{path}: {getattr(exc, 'problem', exc)}")
            continue
        try:
            return Keyring.from_dict(strict_loads(data, what=path, max_bytes=KEYRING_MAX_BYTES, max_depth=6))
        except ApplianceError as exc:
            damaged.append(f"{path}: {exc.problem}")
    if damaged:
        raise WrongKeyError(f"the store's keyring is damaged ({'; '.join(damaged)})")
    return None


def write_keyring(storage: Storage, keyring: Keyring) -> None:
    data = canonical_bytes(keyring.to_dict()) + b"\n"
    write_durable(storage, KEYRING, data)
    write_durable(storage, KEYRING_COPY, data)


def erased_at(storage: Storage) -> str | None:
    try:
        data = storage.read(ERASED, 4096)
    except FileNotFoundError:
        return None
    except (ApplianceError, StorageError):
        return "unknown time (marker unreadable)"
    try:
        return str(strict_loads(data, what=ERASED, max_bytes=4096, max_depth=2).get("erased", "unknown time"))
    except (ApplianceError, AttributeError):
        return "unknown time (marker damaged)"


class StoreKeys:
    """Unwrapped data keys of one store, fetched from its KEK provider once and cached.

    ``kek`` overrides the provider the keyring names (API callers holding the KEK, tests).
    """

    def __init__(self, storage: Storage, kek: KekSource | None = None) -> None:
        self.storage = storage
        self.kek_override = kek
        self._ciphers: dict[str, FrameCipher] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        with self._lock:
            self._ciphers.clear()

    def keyring(self) -> Keyring:
        keyring = read_keyring(self.storage)
        if keyring is None:
            when = erased_at(self.storage)
            if when is not None:
                raise CryptoErasedError(f"this store was crypto-erased at {when}: its data keys no longer exist")
            raise KeyUnavailableError("the store's keyring (keyring.json and its copy) is missing")
        return keyring

    def source(self, keyring: Keyring) -> KekSource:
        return self.kek_override or kek_source(keyring.kek)

    def kek(self, keyring: Keyring) -> bytes:
        kek = self.source(keyring).kek()
        if kek_check(kek) != keyring.kek_check:
            raise WrongKeyError(f"the KEK from {self.source(keyring).descriptor()} is not this store's KEK")
        return kek

    def cipher(self, key_id: str) -> FrameCipher:
        with self._lock:
            cached = self._ciphers.get(key_id)
            if cached is not None:
                return cached
            keyring = self.keyring()
            wrapped = keyring.get(key_id)
            if wrapped is None:
                raise WrongKeyError(f"data key {key_id[:12]} is not in this store's keyring (retired or foreign)")
            cipher = unwrap_data_key(wrapped, self.kek(keyring))
            self._ciphers[key_id] = cipher
            return cipher

    def active(self) -> FrameCipher:
        return self.cipher(self.keyring().active)


# id(storage) -> (reference to the storage, its keys). Keyed by identity, not by value: storages
# need not be hashable (dataclass wrappers) and two storages of one root keep separate caches.
_REGISTRY: dict[int, tuple[Callable[[], object], StoreKeys]] = {}
_REGISTRY_LOCK = threading.Lock()


def _same(value: object) -> object:
    return value


def _forget(
    registry: dict[int, tuple[Callable[[], object], StoreKeys]], lock: threading.Lock, key: int, ref: object
) -> None:
    """Weak-reference callback; gets its registry passed in (module globals are gone at interpreter exit)."""
    with lock:
        if key in registry and registry[key][0] is ref:
            del registry[key]


def keys_for(storage: Storage) -> StoreKeys:
    """The ``StoreKeys`` of ``storage`` (one per storage object, created on first use, dropped with it)."""
    with _REGISTRY_LOCK:
        entry = _REGISTRY.get(id(storage))
        if entry is not None and entry[0]() is storage:
            return entry[1]
        keys = StoreKeys(storage)
        ref: Callable[[], object]
        try:
            ref = weakref.ref(storage, functools.partial(_forget, _REGISTRY, _REGISTRY_LOCK, id(storage)))
        except TypeError:  # a storage without weak references is kept (and cached) for the process
            ref = functools.partial(_same, storage)
        _REGISTRY[id(storage)] = (ref, keys)
        return keys


def cipher_for(storage: Storage, encryption: Encryption | None) -> FrameCipher | None:
    """The cipher that opens frames of a manifest with this ``encryption`` field (None: plain)."""
    return None if encryption is None else keys_for(storage).cipher(encryption.key_id)


def create_keyring(storage: Storage, kek: KekSource) -> FrameCipher:
    """A new keyring with one fresh data key wrapped under ``kek`` (refused if one exists)."""
    if read_keyring(storage) is not None:
        raise WrongKeyError("this store already has a keyring", remedy="rotate with `appliance key rotate-kek`")
    secret = kek.kek()
    cipher = new_data_key()
    keyring = Keyring(kek.descriptor(), kek_check(secret), cipher.key_id, (wrap_data_key(cipher, secret, _utc()),))
    write_keyring(storage, keyring)
    keys_for(storage).forget()
    return cipher


def rotate_kek(storage: Storage, new: KekSource) -> Keyring:
    """Re-wrap every data key under ``new`` (no frame is rewritten); the old KEK is needed once more."""
    keys = keys_for(storage)
    keyring = keys.keyring()
    old = keys.kek(keyring)
    secret = new.kek()
    rewrapped = tuple(wrap_data_key(unwrap_data_key(k, old), secret, k.created) for k in keyring.keys)
    result = replace(keyring, kek=new.descriptor(), kek_check=kek_check(secret), keys=rewrapped)
    write_keyring(storage, result)
    keys.kek_override = None
    keys.forget()
    return result


def add_data_key(storage: Storage) -> FrameCipher:
    """A new data key, made active: the next commit (a compaction) re-seals every frame under it."""
    keys = keys_for(storage)
    keyring = keys.keyring()
    secret = keys.kek(keyring)
    cipher = new_data_key()
    added = (*keyring.keys, wrap_data_key(cipher, secret, _utc()))
    write_keyring(storage, replace(keyring, active=cipher.key_id, keys=added))
    keys.forget()
    return cipher


def retire_data_keys(storage: Storage, used: set[str]) -> list[str]:
    """Drop wrapped data keys that no committed checkpoint uses (never the active one); their ids."""
    keyring = keys_for(storage).keyring()
    kept = tuple(k for k in keyring.keys if k.key_id in used or k.key_id == keyring.active)
    dropped = [k.key_id for k in keyring.keys if k not in kept]
    if dropped:
        write_keyring(storage, replace(keyring, keys=kept))
        keys_for(storage).forget()
    return dropped


def crypto_erase(storage: Storage) -> dict[str, object]:
    """Destroy every wrapped data key: the erase marker first, then unlink each keyring copy and sync.

    What this does not reach (page cache, flash blocks the FTL remapped, a KEK kept on the same
    medium) is stated in docs/design.md §14.6; the KEK file can be destroyed too (``--destroy-kek``).
    """
    start = time.perf_counter()
    write_durable(storage, ERASED, canonical_bytes({"erased": _utc()}) + b"\n")
    destroyed = []
    for path in (KEYRING, KEYRING_COPY):
        size = storage.size(path)
        if size is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            storage.unlink(path)
            destroyed.append(path)
    storage.fsync_dir("")
    keys_for(storage).forget()
    return {"destroyed": destroyed, "seconds": round(time.perf_counter() - start, 6)}
