"""First boot's encrypted store: the keyring under node.json's ``encrypt_kek``, resumable after any cut.

Owns: ``ensure_keyring`` — what the ``store`` step does before it writes ``store.json`` (with
``"encrypt": true``, last) when node.json asks for encryption at rest (docs/design.md §14, docs/image.md §4):

* no keyring yet: the KEK is obtained, created first when it is a file or ``systemd-creds``
  credential that does not exist (``appliance.crypto.create_missing``, the code path of
  ``appliance init --encrypt``; a new file KEK is 0400, or 0440 group ``appliance`` as root where
  that group exists, so the node's services can read it), then one fresh data key is wrapped
  under it (``appliance.store.keys.create_keyring``);
* a keyring already there (a cut between it and ``store.json``): reused when it names the
  configured KEK and that KEK unwraps its active data key; otherwise ``WrongKeyError`` (56) or
  ``KeyUnavailableError`` (55) with a remedy, and nothing is written. Never a second keyring,
  never a new KEK while a keyring exists, never a plain store when encryption was asked.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.crypto import FileKek, KekSource, SystemdCredsKek, create_missing, parse_kek_option
from appliance.errors import KeyUnavailableError, WrongKeyError
from appliance.format.crypto import Keyring
from appliance.provision import files
from appliance.storage import LocalStorage
from appliance.store.keys import KEYRING, KEYRING_COPY, StoreKeys, create_keyring, read_keyring, write_keyring


def provider_name(spec: str) -> str:
    """``file``, ``systemd-creds`` or ``entry-point``: what event details name."""
    return spec.partition(":")[0]


def ensure_keyring(storage: LocalStorage, spec: str) -> str:
    """The store's keyring under the KEK ``spec`` names: ``"created"`` or ``"reused"`` (see the module)."""
    source = parse_kek_option(spec)
    ring = read_keyring(storage)
    if ring is None:
        create_keyring(storage, _created(source))
        return "created"
    _check_reusable(storage, ring, source)
    if storage.size(KEYRING) is None or storage.size(KEYRING_COPY) is None:
        write_keyring(storage, ring)  # a cut between the two copies: complete the pair
    return "reused"


def _created(source: KekSource) -> KekSource:
    if isinstance(source, FileKek | SystemdCredsKek):
        source.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    group = files.group_id() if os.geteuid() == 0 else None
    return create_missing(source, group)


def _check_reusable(storage: LocalStorage, ring: Keyring, source: KekSource) -> None:
    root = Path(storage.root)
    remedy = (
        f"put back the KEK that an earlier first boot wrapped {root / KEYRING} under ({_describe(ring.kek)}); if it "
        f"is lost and the store holds no checkpoint yet, delete {root / KEYRING} and {root / KEYRING_COPY} so the "
        "next boot creates a new keyring"
    )
    if ring.kek != source.descriptor():
        raise WrongKeyError(
            f"the store's keyring (left by an earlier, interrupted first boot) names KEK {_describe(ring.kek)}, "
            f"not node.json's encrypt_kek {_describe(source.descriptor())}",
            remedy=remedy,
        )
    try:
        StoreKeys(storage, kek=source).active()
    except (WrongKeyError, KeyUnavailableError) as exc:
        raise type(exc)(f"the store's keyring cannot be reused: {exc.problem}", remedy=remedy) from exc


def _describe(descriptor: dict[str, str]) -> str:
    return ":".join(descriptor.get(k, "") for k in ("provider", "path", "name") if k in descriptor)
