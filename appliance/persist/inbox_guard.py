"""What the persistence watchdog checks about the fleet channel's inbox itself, before and after an import.

Owns: ``check_inbox`` — the inbox (node.json ``channel_inbox``), every directory above it and, before
an import, everything staged in it, each seen with ``lstat`` (a symbolic link is reported, never
followed): owner (the channel's user, node.json ``channel_user``; this process's user; root), mode
(nothing writable by the group or others), regular files and directories only. A defect
raises ``InboxPermissionError`` (90) naming the path, its owner and mode, the owner and mode
expected, and the ``chown``/``chmod`` that fixes it. ``ImportedHeads`` — ``STORE/channel-seen.json``,
the newest channel head sequence this store's writer imported per channel prefix: the replay
memory of the staged path (the channel program's own heads-seen lives in its state directory, which
the writer neither can read nor would trust). Rules: ``appliance.format.inbox``; design:
docs/design.md §7.2, §11.6.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from appliance.errors import ApplianceError, InboxPermissionError, StorageError
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.inbox import InboxOwners, ancestor_problem, inbox_entry_problem, inbox_remedy
from appliance.storage import Storage, write_durable
from appliance.store import layout

SEEN_MAX_BYTES = 64 * 1024


def owners_for(channel_user: str) -> InboxOwners:
    """Who may own the inbox on this machine (a channel user that does not exist here is left out)."""
    try:
        uid: int | None = pwd.getpwnam(channel_user).pw_uid
    except KeyError:
        uid = None
    return InboxOwners(channel_user=channel_user, channel_uid=uid, own_uid=os.geteuid())


def check_inbox(path: str | Path, owners: InboxOwners, *, deep: bool) -> bool:
    """Refuse (``InboxPermissionError``) an inbox someone but the channel's user could write; ``False`` when
    there is no inbox. ``deep``: also every file and directory staged in it (before an import)."""
    where = Path(path).absolute()  # not resolved: the inbox itself must not be a symbolic link
    inbox = str(where)
    try:
        st = os.lstat(inbox)
    except FileNotFoundError:
        return False
    parent = where.parent.resolve()
    for above in (*reversed(parent.parents), parent):  # from / down: the first defect is the one to fix first
        ast = os.lstat(above)
        _refuse(ancestor_problem(str(above), mode=ast.st_mode, uid=ast.st_uid, owners=owners,
                                 owner=_name(ast.st_uid)), inbox, str(above), owners)  # fmt: skip
    _refuse(inbox_entry_problem(f"channel inbox {inbox}", mode=st.st_mode, uid=st.st_uid, owners=owners,
                                owner=_name(st.st_uid)), inbox, inbox, owners)  # fmt: skip
    if deep:
        _walk(inbox, inbox, owners, depth=0)
    return True


def _walk(inbox: str, directory: str, owners: InboxOwners, depth: int) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            what = f"{entry.path} (in the channel inbox)"
            _refuse(inbox_entry_problem(what, mode=st.st_mode, uid=st.st_uid, owners=owners, owner=_name(st.st_uid)),
                    inbox, entry.path, owners)  # fmt: skip
            if entry.is_dir(follow_symlinks=False) and depth < 2:  # bundles/NAME, blobs/FAN/NAME: nothing deeper
                _walk(inbox, entry.path, owners, depth + 1)  # is staged or read (so it is not looked into)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _refuse(found: tuple[str, str] | None, inbox: str, path: str, owners: InboxOwners) -> None:
    if found is not None:
        problem, kind = found
        raise InboxPermissionError(problem, remedy=inbox_remedy(inbox, path, kind, owners))


class ImportedHeads:
    """``STORE/channel-seen.json``: ``{channel prefix: newest head sequence imported}``, written durably."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _load(self) -> dict[str, int]:
        try:
            data = self.storage.read(layout.CHANNEL_SEEN, SEEN_MAX_BYTES)
        except FileNotFoundError:
            return {}
        try:
            obj = strict_loads(data, what=layout.CHANNEL_SEEN, max_bytes=SEEN_MAX_BYTES, max_depth=2)
        except ApplianceError as exc:
            obj = exc
        if not isinstance(obj, dict) or not all(isinstance(v, int) and v >= 0 for v in obj.values()):
            # fail closed: without it a replayed old head could be imported again
            raise StorageError(
                f"the store's channel replay memory {layout.CHANNEL_SEEN} is damaged; no staged release is imported",
                remedy=(
                    f"as the store's writer, replace STORE/{layout.CHANNEL_SEEN} with "
                    '{"CHANNEL_PREFIX": SEQUENCE} (the sequence of the newest channel head this node imported; '
                    "`appliance events` remote.restored) or remove it to accept the channel's current head"
                ),
            )
        return obj

    def seen(self, prefix: str) -> int:
        return self._load().get(prefix, 0)

    def raise_seen(self, prefix: str, sequence: int) -> None:
        seen = self._load()
        if sequence > seen.get(prefix, 0):
            seen[prefix] = sequence
            write_durable(self.storage, layout.CHANNEL_SEEN, canonical_bytes(seen) + b"\n")
