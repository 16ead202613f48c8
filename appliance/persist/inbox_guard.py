"""What the persistence watchdog checks about the fleet channel's inbox itself, before and after an import.

Owns: ``check_inbox`` — the inbox (node.json ``channel_inbox``), every directory above it and, before
an import, everything staged in it, each seen with ``lstat`` (a symbolic link is reported, never
followed): owner (the channel's user, node.json ``channel_user``; this process's user; root), mode
(nothing writable by the group or others), regular files and directories only. A defect
raises ``InboxPermissionError`` (90) naming the path, its owner and mode, the owner and mode
expected, and the ``chown``/``chmod`` that fixes it; a directory where the layout has a file (or the
reverse) is refused the same way. ``read_head`` — the staged ``head.json``, judged by the same rules
(``lstat``, then ``O_NOFOLLOW`` and ``fstat``) before a byte of it is read, with its file's identity
(a re-staged head is a new hand-off). ``ImportedHeads`` — ``STORE/channel-seen.json``,
the newest channel head sequence this store's writer imported per channel prefix: the replay
memory of the staged path (the channel program's own heads-seen lives in its state directory, which
the writer neither can read nor would trust). Rules: ``appliance.format.inbox``; design:
docs/design.md §7.2, §11.6.
"""

from __future__ import annotations

import errno
import os
import pwd
from pathlib import Path

from appliance.errors import ApplianceError, InboxPermissionError, LimitExceededError, StorageError
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.inbox import (
    INBOX_HEAD,
    InboxOwners,
    ancestor_problem,
    expected_kind,
    inbox_entry_problem,
    inbox_remedy,
)
from appliance.format.remote import HEAD_MAX_BYTES
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
                                owner=_name(st.st_uid), expect="dir"), inbox, inbox, owners)  # fmt: skip
    if deep:
        _walk(inbox, inbox, owners, depth=0)
    return True


def _walk(inbox: str, directory: str, owners: InboxOwners, depth: int) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            _check_entry(inbox, entry.path, entry.stat(follow_symlinks=False), owners)
            if entry.is_dir(follow_symlinks=False) and depth < 2:  # bundles/NAME, blobs/FAN/NAME: nothing deeper
                _walk(inbox, entry.path, owners, depth + 1)  # is staged or read (so it is not looked into)


def _check_entry(inbox: str, path: str, st: os.stat_result, owners: InboxOwners) -> None:
    """Refuse one entry of the inbox (its ``lstat``/``fstat``) as ``inbox_entry_problem`` says."""
    expect = expected_kind(os.path.relpath(path, inbox))
    _refuse(inbox_entry_problem(f"{path} (in the channel inbox)", mode=st.st_mode, uid=st.st_uid, owners=owners,
                                owner=_name(st.st_uid), expect=expect), inbox, path, owners)  # fmt: skip


def read_head(path: str | Path, owners: InboxOwners) -> tuple[bytes, str] | None:
    """The head staged in the inbox (its bytes, unverified) and its file's identity; ``None`` when none is staged.

    The file is judged before it is read, like everything staged (``InboxPermissionError``: a symbolic link,
    a directory, a special file, the wrong owner or mode): ``lstat``, then opened without following a link,
    then what was opened (``fstat``), so a file swapped in between is judged too. Call ``check_inbox`` first."""
    inbox = str(Path(path).absolute())
    head = str(Path(inbox) / INBOX_HEAD)
    try:
        _check_entry(inbox, head, os.lstat(head), owners)
        fd = os.open(head, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symbolic link after the lstat
            _check_entry(inbox, head, os.lstat(head), owners)
        raise
    try:
        st = os.fstat(fd)
        _check_entry(inbox, head, st, owners)
        if st.st_size > HEAD_MAX_BYTES:
            raise LimitExceededError(f"{head} is {st.st_size} bytes, above the cap of {HEAD_MAX_BYTES}")
        data = _read_all(fd, st.st_size)
    finally:
        os.close(fd)
    return data, f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"


def _read_all(fd: int, size: int) -> bytes:
    """Exactly ``size`` bytes (one more is asked for: a file that changed size is a ``StorageError``, retried)."""
    chunks, got = [], 0
    while got <= size:
        chunk = os.read(fd, size + 1 - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got != size:
        raise StorageError(f"the staged {INBOX_HEAD} changed size while it was read")
    return b"".join(chunks)


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
