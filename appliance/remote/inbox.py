"""The fleet channel split at the store's write boundary: the network side stages, the store's writer imports.

Owns: ``import_staged`` — the persistence watchdog's import of what the inbox holds, as the store's
only writer, trusting nothing the network side decided: the head's signature by a release key of
the model, its binding to this node's channel and model, the floor, the staged bundle being whole
and the head's (a missing or damaged one is ``PartialCheckpointError``, retried: the channel
program re-stages it) and signed by a release key, "newer than the node", no head older than the
newest the writer imported (replay), every blob hashed as read — the import of
``appliance.transfer`` that ``appliance import`` and the USB import use. ``InboxLayout`` is the
``LayoutReader`` it reads: the inbox, then the node's own slots, pinned to the head's bundle. The
network side (``stage_release``): ``appliance.remote.staging``. Rules (names, what to stage and
tidy): ``appliance.format.inbox``; design: docs/design.md §11.6 and §7.2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.errors import ApplianceError, ConfigError, LimitExceededError, PartialCheckpointError
from appliance.format.digest import Digest
from appliance.format.inbox import check_not_replayed, staged_bundle_problem
from appliance.format.portable import BLOBS, BUNDLES
from appliance.format.remote import HeadRecord, check_head_fresh
from appliance.remote.channel import channel_keys, verify_channel_head
from appliance.remote.pull import import_pinned
from appliance.signing import PublicKey
from appliance.storage import LocalStorage, Storage
from appliance.store import layout
from appliance.store.store import Store
from appliance.transfer import ImportResult

SLOTS = ("A", "B")


class InboxLayout:
    """The inbox as an import source: its bundle (pinned to the head's), its blobs, else the node's own
    slots' copies of a blob (the network side stages only what the node lacks). Read verified by the importer."""

    def __init__(self, inbox: LocalStorage, store: Store, pinned: str) -> None:
        self.inbox, self.store, self.pinned = inbox, store, pinned

    def _places(self, path: str) -> list[tuple[Storage, str]]:
        places: list[tuple[Storage, str]] = [(self.inbox, path)]
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == BLOBS:
            try:
                digest = Digest.parse(parts[2], "inbox blob name")
            except ApplianceError:
                return places
            places += [(self.store.storage, layout.frame_path(slot, digest)) for slot in SLOTS]
        return places

    def read(self, path: str, max_size: int) -> bytes:
        return self.inbox.read(path, max_size)

    def read_into(self, path: str, out: memoryview) -> int:
        for storage, where in self._places(path):
            try:
                return storage.read_into(where, out)
            except FileNotFoundError:
                continue
        raise FileNotFoundError(path)

    def size(self, path: str) -> int | None:
        for storage, where in self._places(path):
            size = storage.size(where)
            if size is not None:
                return size
        return None

    def listdir(self, path: str) -> list[str] | None:
        return [self.pinned] if path == BUNDLES else self.inbox.listdir(path)


def open_inbox(path: str | Path, *, create: bool = False) -> LocalStorage | None:
    """The inbox directory as storage; ``None`` when it does not exist (and ``create`` is false)."""
    path = Path(path)
    if create:
        path.mkdir(mode=0o2750, parents=True, exist_ok=True)
    return LocalStorage(path) if path.is_dir() else None


def release_signers(store: Store, pinned: Sequence[PublicKey]) -> tuple[list[PublicKey], frozenset[str]]:
    """The channel's keys (the trust store's release keys of the model, ``pinned`` a legacy pin) and their ids."""
    accepted = channel_keys(store.trust, store.config.model, pinned)
    return accepted, frozenset(k.keyid for k in accepted)


# --- the store's writer (appliance-persist) --------------------------------------------------------


def import_staged(
    store: Store,
    inbox: LocalStorage,
    data: bytes,
    *,
    channel: str,
    floor: int,
    last_seen: int,
    pinned: Sequence[PublicKey] = (),
    progress: Callable[[int], None] | None = None,
) -> tuple[HeadRecord, ImportResult]:
    """Import the release the inbox's head (``data``) names, re-checking everything (the inbox is untrusted).

    ``last_seen``: the newest head sequence this store's writer imported from the channel; an older head is a
    replay (``HeadError``), refused before any bulk data is read."""
    if not channel:
        raise ConfigError("a release is staged in the channel inbox but remote.json names no channel",
                          remedy="set channel in remote.json beside node.json, or empty the inbox")  # fmt: skip
    model = store.config.model
    accepted, signers = release_signers(store, pinned)
    head = verify_channel_head(data, store.trust, accepted, model)
    check_head_fresh(head, kind="channel", name=channel, model=model, last_seen=0, floor=floor)
    check_not_replayed(head.sequence, head.generation, last_seen, channel)
    _check_staged_bundle(inbox, head, store)
    source = InboxLayout(inbox, store, pinned=head.bundle.key.rpartition("/")[2])
    return head, import_pinned(store, source, head, floor=floor, progress=progress, require_signers=signers)


def _check_staged_bundle(inbox: LocalStorage, head: HeadRecord, store: Store) -> None:
    """The bundle the head names is staged whole: else ``PartialCheckpointError`` (retried; re-staged by the
    channel program), not the "not the bundle its name promises" refusal the import would remember."""
    try:
        data: bytes | None = inbox.read(head.bundle.key, store.limits.manifest_max_bytes)
    except FileNotFoundError:
        data = None
    except LimitExceededError:
        data = b""  # larger than any bundle: not the one the head names
    problem = staged_bundle_problem(head.bundle, data, str(inbox.root))
    if problem is not None:
        raise PartialCheckpointError(f"{problem}; nothing was copied")
