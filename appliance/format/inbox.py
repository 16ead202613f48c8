"""The fleet channel's inbox as pure rules: its names, what the network side stages, what it tidies,
and how the store's writer treats a staged release it could not import.

Owns: the inbox layout (docs/design.md §11.6) — the portable layout of §11.1 holding *only* the
blobs the node lacks, plus the channel's signed ``head.json`` written last (the hand-off point) —,
``blobs_to_stage`` (which blobs the network side downloads), ``stale_keys`` (which inbox files
no longer serve the head), ``VerifiedStaging`` (when the network side re-verifies a staging it
handed off that the store has not imported yet), ``retry_import`` (a failure the writer retries with
backoff, or a refusal it remembers until the head changes) and ``restage_remedy`` (what fixes a
damaged staging), what the writer requires of the inbox itself before it imports from it
(``inbox_entry_problem``, ``expected_kind``, ``ancestor_problem``, ``inbox_remedy``: owner, mode, no
symbolic links, a file where the layout has a file; docs/design.md §7.2) and the replay rule
(``check_not_replayed``: a head older than the newest the writer imported). Does no I/O.

Trust: nothing in the inbox is trusted by its reader. The channel program (``appliance-channel``)
writes it; the persistence watchdog (``appliance-persist``, the store's only writer) imports from
it exactly as from a USB stick: head signature and binding, bundle signature and key role, floor,
"newer than the node", SHA-256 of every blob as read.
"""

from __future__ import annotations

import stat
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from appliance.errors import (
    ApplianceError,
    FrameError,
    HeadError,
    PartialCheckpointError,
    SourceUnavailableError,
    StorageError,
)
from appliance.format.digest import Digest
from appliance.format.portable import BLOBS, BUNDLES, BlobRef, BundleName, blob_key, is_fan_dir

INBOX_HEAD = "head.json"  # the channel head the staged bundle belongs to; written last, removed first


def blobs_to_stage(required: Sequence[BlobRef], held: Collection[Digest]) -> list[BlobRef]:
    """The blobs the network side must download: every required one the node does not hold verified."""
    return [b for b in required if b.digest not in held]


def stale_keys(present: Iterable[str], keep_bundle: str | None, keep_blobs: Iterable[BlobRef]) -> list[str]:
    """Inbox files (``bundles/…``, ``blobs/…``) that the current head does not need: bundles first, so a
    reader never finds a bundle whose blobs were already removed."""
    keep = {blob_key(b.digest) for b in keep_blobs} | ({keep_bundle} if keep_bundle else set())
    stale = [k for k in present if k not in keep and k.startswith((BUNDLES + "/", BLOBS + "/"))]
    return sorted(stale, key=lambda k: (not k.startswith(BUNDLES + "/"), k))


REVERIFY_S = 3600.0  # a staging handed off and not imported is hashed again at least this often (bit rot)


@dataclass
class VerifiedStaging:
    """What the channel program last found whole in its inbox (in memory, ``channel follow --watch``).

    ``seal``: the staging's file identities (inode, size, times) and the store's commit records when it was
    verified. While a handed-off head is not imported, a pass whose seal is unchanged and younger than
    ``REVERIFY_S`` skips the re-verification (hashing every staged blob); any change to a staged file (truncated,
    rewritten, removed) or to the store's checkpoints (the slots a staging relies on) is verified again."""

    seal: object = None
    at: float = 0.0

    def holds(self, seal: object, now: float) -> bool:
        return self.seal is not None and seal == self.seal and 0.0 <= now - self.at < REVERIFY_S

    def remember(self, seal: object, now: float) -> None:
        self.seal, self.at = seal, now


def staged_bundle_problem(bundle: BundleName, data: bytes | None, inbox: str) -> str | None:
    """Why the staged bundle cannot serve the head that names it (``data``: its bytes, ``None`` when it is
    missing); ``None`` when its SHA-256 is the one the head promises."""
    where = f"{inbox.rstrip('/')}/{bundle.key}"
    if data is None:
        return f"the staged bundle {where} is missing (the head names it)"
    if Digest.of(data) != bundle.digest:
        return f"the staged bundle {where} is not the one the head names (truncated, altered or replaced)"
    return None


def retry_import(exc: ApplianceError) -> bool:
    """Whether a failed import of a staged release is retried (with backoff) or remembered as refused.

    Retried: the medium or the store failed (``StorageError``: full, locked, unavailable, a file that
    vanished while the channel replaced it), a blob is missing or does not hash (``PartialCheckpointError``,
    ``FrameError``: the network side may still be staging). Refused until the head changes: everything
    that judges the release itself (signature, key role, head binding, floor, older than the node, model).
    """
    return isinstance(exc, StorageError | FrameError | PartialCheckpointError)


def damaged_staging(exc: ApplianceError) -> bool:
    """A failed import the channel program's next pass repairs: a staged file missing, cut short or not hashing."""
    return isinstance(exc, FrameError | PartialCheckpointError | SourceUnavailableError)


def restage_remedy(inbox: str) -> str:
    """The remedy of a failed import from a damaged or incomplete staging (there is no export to re-run)."""
    return (
        f"nothing was imported; the channel program (appliance-channel) finds the staging in {inbox} incomplete "
        "on its next pass, downloads the damaged or missing files again and hands the release off again, then "
        "this watchdog imports it; `appliance channel follow` (as appliance-channel) runs one pass now. If the "
        "damage returns after a fresh staging, suspect the disk that holds the inbox (check dmesg and its SMART data)"
    )


# --- what the store's writer requires of the inbox itself (docs/design.md §7.2) --------------------

INBOX_MODE = 0o2750  # tmpfiles: d INBOX 2750 appliance-channel appliance; staged files 0640, directories 0750
INBOX_FORBIDDEN_BITS = 0o022  # group or world write: only the channel's user may write the inbox
ANCESTOR_FORBIDDEN_BITS = 0o022  # a directory above the inbox another user could rename it in (unless sticky)


@dataclass(frozen=True)
class InboxOwners:
    """Who may own the inbox and what it holds: the channel's user (node.json ``channel_user``), the
    importing process's own user (a single-user development node) and root."""

    channel_user: str
    channel_uid: int | None  # None: no such user on this machine
    own_uid: int

    def allowed(self, uid: int) -> bool:
        return uid in (self.channel_uid, self.own_uid, 0)

    def describe(self) -> str:
        channel = f"{self.channel_user} (uid {self.channel_uid})" if self.channel_uid is not None else None
        names = [n for n in (channel, f"this process's user (uid {self.own_uid})", "root") if n]
        return ", ".join(dict.fromkeys(names))

    @property
    def chown_to(self) -> str:
        return self.channel_user if self.channel_uid is not None else str(self.own_uid)


def expected_kind(relative: str) -> str | None:
    """What the layout has at ``relative`` (a path inside the inbox): ``file`` (the head, a bundle, a blob),
    ``dir`` (``bundles``, ``blobs``, a blob fan directory), or ``None`` (not the layout's: any file or directory)."""
    parts = relative.split("/")
    if parts == [INBOX_HEAD]:
        return "file"
    if parts[0] not in (BUNDLES, BLOBS):
        return None
    if len(parts) == 1:
        return "dir"
    if parts[0] == BUNDLES:
        return "file" if len(parts) == 2 else None
    if len(parts) == 2:
        return "dir" if is_fan_dir(parts[1]) else None
    return "file" if len(parts) == 3 and is_fan_dir(parts[1]) else None


def inbox_entry_problem(
    what: str, *, mode: int, uid: int, owners: InboxOwners, owner: str = "", expect: str | None = None
) -> tuple[str, str] | None:
    """Why the inbox's entry ``what`` (the directory or a staged file, from ``lstat``) must not be imported
    from, and its kind (``symlink``, ``type``, ``dir``, ``owner``, ``mode``); ``None`` when it is as §7.2 says.
    ``expect``: ``file`` or ``dir`` where the layout has one there (``expected_kind``)."""
    wrong = _type_problem(what, mode, owners, expect)
    if wrong is not None:
        return wrong
    if not owners.allowed(uid):
        named = f" ({owner})" if owner else ""
        return f"{what} is owned by uid {uid}{named}; expected owner: {owners.describe()}", "owner"
    if mode & INBOX_FORBIDDEN_BITS:
        return (
            f"{what} has mode {stat.S_IMODE(mode):04o}: its group or others may write it; expected "
            f"mode {INBOX_MODE:04o} for the inbox (staged files 0640, directories 0750)"
        ), "mode"
    return None


def _type_problem(what: str, mode: int, owners: InboxOwners, expect: str | None) -> tuple[str, str] | None:
    if stat.S_ISLNK(mode):
        wanted = f"; expected a directory owned by {owners.describe()}" if expect == "dir" else ""
        return f"{what} is a symbolic link (never followed in the channel inbox){wanted}", "symlink"
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        return f"{what} is neither a regular file nor a directory", "type"
    if expect == "file" and stat.S_ISDIR(mode):
        return f"{what} is a directory, not the regular file the channel program stages there", "dir"
    if expect == "dir" and stat.S_ISREG(mode):
        return f"{what} is a regular file, not a directory", "type"
    return None


def ancestor_problem(what: str, *, mode: int, uid: int, owners: InboxOwners, owner: str = "") -> tuple[str, str] | None:
    """Why a directory above the inbox lets another user replace the inbox (``None``: it does not)."""
    if not owners.allowed(uid):
        named = f" ({owner})" if owner else ""
        return f"{what} (above the channel inbox) is owned by uid {uid}{named}; expected owner: {owners.describe()}", (
            "owner"
        )
    if mode & ANCESTOR_FORBIDDEN_BITS and not mode & stat.S_ISVTX:
        return (
            f"{what} (above the channel inbox) has mode {stat.S_IMODE(mode):04o}: others may replace the inbox in it"
        ), "ancestor-mode"
    return None


def inbox_remedy(inbox: str, path: str, kind: str, owners: InboxOwners) -> str:
    """The command that makes the inbox as §7.2 says (then the next pass imports what it holds)."""
    then = "; the next pass of the persistence watchdog imports the staged release (nothing was imported)"
    if kind in {"symlink", "type"} and path == inbox:
        return (
            f"replace {inbox} with a real directory: `rm {inbox} && install -d -m 2750 -o {owners.chown_to} {inbox}` "
            f"(tmpfiles: d {inbox} 2750 appliance-channel appliance); the channel program stages the release "
            "there again on its next pass (nothing was imported)"
        )
    if kind in {"symlink", "type", "dir"}:
        rm = "rm -r" if kind == "dir" else "rm"
        return (
            f"remove {path} (`{rm} {path}`): the channel program stages regular files only; its next pass stages "
            "what is missing again, then the persistence watchdog imports the release (nothing was imported)"
        )
    if kind == "ancestor-mode":
        return f"chmod go-w {path} (or give it the sticky bit), or move the inbox (node.json channel_inbox){then}"
    if kind == "owner" and path != inbox and not path.startswith(inbox.rstrip("/") + "/"):
        return f"chown root {path}, or move the inbox (node.json channel_inbox){then}"
    return f"chown -R {owners.chown_to} {inbox} && chmod -R g-w,o-rwx {inbox}{then}"


def check_not_replayed(sequence: int, generation: int, seen: int, channel: str) -> None:
    """Refuse a staged head older than the newest this store's writer imported from the channel."""
    if sequence < seen:
        raise HeadError(
            f"the head staged in the channel inbox has sequence {sequence} (generation {generation}), older than "
            f"sequence {seen} this node already imported from channel {channel!r}: a replayed old head",
            remedy=(
                "nothing was imported; the channel program stages the channel's current head on its next pass. If "
                "this repeats, the channel program (appliance-channel) or its bucket may be compromised: check them"
            ),
        )


def import_exit_code(committed: bool, outcome: dict[str, object]) -> int:
    """``appliance persist --once``'s exit status: a refused or failed import is the error's own code when it
    was the pass's only action, ``1`` (completed with warnings) beside a commit, else ``0``."""
    if outcome.get("status") not in ("refused", "failed"):
        return 0
    code = outcome.get("exit_code")
    return 1 if committed or not isinstance(code, int) else code
