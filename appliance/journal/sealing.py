"""Sealing the journal's step payloads on a node whose store is encrypted (docs/design.md §14, §15.1).

Owns: ``Sealing`` — the store's active data key's ``JournalSeal`` (every new segment is sealed
under it and names it in its header) and the lookup of any key of the store's keyring by id
(replaying a segment sealed before a data-key rotation) — and ``for_store``. Does not own the
record layout (``appliance.format.journal``) or the AEAD (``appliance.crypto``).

Why the data key: the service already unwraps it to restore (the KEK stays in the key provider),
whereas the journal's MAC key is a file beside the device key that an offline storage attacker
can read. Sealed payloads are therefore confidential *and* authentic against that attacker.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.crypto import JournalSeal
from appliance.errors import WrongKeyError
from appliance.store.keys import StoreKeys, keys_for
from appliance.store.store import Store


@dataclass(frozen=True)
class Sealing:
    active: JournalSeal
    keys: StoreKeys

    def opener(self, key_id: str) -> JournalSeal | None:
        """The seal of data key ``key_id``; ``None`` when the keyring no longer holds it (retired).

        ``KeyUnavailableError`` (55) when the KEK cannot be had: a node fault, not a journal one.
        """
        if key_id == self.active.key_id:
            return self.active
        try:
            return JournalSeal(self.keys.cipher(key_id))
        except WrongKeyError:
            return None


def for_store(store: Store) -> Sealing | None:
    """The sealing of ``store``'s journal, or ``None`` when the store is not encrypted."""
    if not store.config.encrypt:
        return None
    keys = keys_for(store.storage)
    return Sealing(JournalSeal(keys.active()), keys)
