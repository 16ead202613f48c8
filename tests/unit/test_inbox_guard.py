"""The store's writer refuses a fleet channel inbox that someone but the channel's user could write.

docs/design.md §7.2: the inbox is 2750, owned by the channel's user (node.json ``channel_user``); the
kernel's file modes are the hand-off's only authentication, so the persistence watchdog checks them
(``lstat``: a symbolic link is refused, never followed) before it reads anything staged there, and it
refuses a staged head older than the newest it imported (replay). Pure rules:
``appliance.format.inbox``; I/O: ``appliance.persist.inbox_guard``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.errors import HeadError, InboxPermissionError, StorageError, UnsafePathError
from appliance.format.inbox import (
    InboxOwners,
    check_not_replayed,
    import_exit_code,
    inbox_entry_problem,
)
from appliance.persist.inbox_guard import ImportedHeads, check_inbox, owners_for
from appliance.storage import LocalStorage
from appliance.store import layout

OWNERS = InboxOwners(channel_user="appliance-channel", channel_uid=990, own_uid=991)
THROWAWAY_UID = 54321  # no such user: os.chown to it as root plays "another user owns it"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another uid")


def _inbox(tmp_path: Path) -> Path:
    inbox = tmp_path / "channel-inbox"
    (inbox / "blobs" / "ab").mkdir(parents=True, mode=0o750)
    (inbox / "bundles").mkdir(mode=0o750)
    inbox.chmod(0o2750)
    (inbox / "head.json").write_bytes(b"{}")
    (inbox / "head.json").chmod(0o640)
    (inbox / "blobs" / "ab" / ("ab" + "0" * 62)).write_bytes(b"blob")
    (inbox / "blobs" / "ab" / ("ab" + "0" * 62)).chmod(0o640)
    return inbox


def _refusal(inbox: Path) -> InboxPermissionError:
    with pytest.raises(InboxPermissionError) as info:
        check_inbox(inbox, owners_for("appliance-channel"), deep=True)
    assert info.value.exit_code == 90
    return info.value


# --- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o2770, 0o0777, 0o2752, 0o0757])
def test_an_inbox_its_group_or_others_may_write_is_refused_naming_mode_and_expected(mode: int) -> None:
    problem, kind = inbox_entry_problem("channel inbox /x", mode=stat.S_IFDIR | mode, uid=990, owners=OWNERS) or (
        "",
        "",
    )
    assert kind == "mode" and f"{mode:04o}" in problem and "expected mode 2750" in problem


def test_an_inbox_of_the_channel_user_itself_or_root_with_mode_2750_is_accepted() -> None:
    for uid in (990, 991, 0):
        assert inbox_entry_problem("i", mode=stat.S_IFDIR | 0o2750, uid=uid, owners=OWNERS) is None
        assert inbox_entry_problem("f", mode=stat.S_IFREG | 0o640, uid=uid, owners=OWNERS) is None


def test_an_inbox_owned_by_another_user_is_refused_naming_the_owner_and_the_expected_one() -> None:
    problem, kind = inbox_entry_problem("channel inbox /x", mode=stat.S_IFDIR | 0o2750, uid=1234, owners=OWNERS,
                                        owner="mallory") or ("", "")  # fmt: skip
    assert kind == "owner" and "uid 1234 (mallory)" in problem and "appliance-channel (uid 990)" in problem


def test_a_symbolic_link_or_special_file_in_the_inbox_is_refused() -> None:
    assert inbox_entry_problem("l", mode=stat.S_IFLNK | 0o777, uid=990, owners=OWNERS)[1] == "symlink"  # type: ignore[index]
    assert inbox_entry_problem("p", mode=stat.S_IFIFO | 0o640, uid=990, owners=OWNERS)[1] == "type"  # type: ignore[index]


def test_a_staged_head_older_than_the_newest_imported_is_refused_as_a_replay() -> None:
    check_not_replayed(5, 1005, 5, "stable")  # the same head again: the import finds it already committed
    check_not_replayed(6, 1006, 5, "stable")
    with pytest.raises(HeadError, match="replayed old head") as info:
        check_not_replayed(4, 1004, 5, "stable")
    assert info.value.exit_code == 49 and "nothing was imported" in info.value.remedy


def test_persist_once_exits_with_a_refused_imports_code_when_it_was_the_only_action() -> None:
    refused = {"status": "refused", "exit_code": 90}
    assert import_exit_code(False, refused) == 90
    assert import_exit_code(False, {"status": "failed", "exit_code": 35}) == 35
    assert import_exit_code(True, refused) == 1  # a commit happened: completed with warnings
    assert import_exit_code(False, {"status": "imported"}) == 0
    assert import_exit_code(False, {"status": "none"}) == 0


# --- the inbox on disk --------------------------------------------------------------------------


def test_a_sound_inbox_is_accepted_and_a_missing_one_is_no_inbox(tmp_path: Path) -> None:
    assert check_inbox(_inbox(tmp_path), owners_for("appliance-channel"), deep=True) is True
    assert check_inbox(tmp_path / "absent", owners_for("appliance-channel"), deep=True) is False


def test_a_world_writable_inbox_is_refused_with_a_chmod_remedy(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    inbox.chmod(0o777)
    exc = _refusal(inbox)
    assert str(inbox) in exc.problem and "0777" in exc.problem and "expected mode 2750" in exc.problem
    assert f"chmod -R g-w,o-rwx {inbox}" in exc.remedy


def test_a_staged_file_writable_by_others_is_refused_naming_the_file(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    blob = next((inbox / "blobs" / "ab").iterdir())
    blob.chmod(0o666)
    exc = _refusal(inbox)
    assert str(blob) in exc.problem and "0666" in exc.problem
    assert check_inbox(inbox, owners_for("appliance-channel"), deep=False)  # the pass's cheap look: the inbox only


def test_a_symlinked_head_in_the_inbox_is_refused_and_never_followed(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    secret = tmp_path / "device.key"
    secret.write_bytes(b"secret")
    (inbox / "head.json").unlink()
    (inbox / "head.json").symlink_to(secret)
    exc = _refusal(inbox)
    assert "symbolic link" in exc.problem and f"rm {inbox / 'head.json'}" in exc.remedy
    with pytest.raises(UnsafePathError, match="symlink"):  # the reader (O_NOFOLLOW) never follows it either
        LocalStorage(inbox).read("head.json", 100)


def test_an_inbox_that_is_itself_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    real = _inbox(tmp_path)
    link = tmp_path / "inbox-link"
    link.symlink_to(real)
    assert "symbolic link" in _refusal(link).problem


def test_a_directory_above_the_inbox_others_may_write_is_refused(tmp_path: Path) -> None:
    above = tmp_path / "shared"
    above.mkdir()
    inbox = _inbox(above)
    above.chmod(0o777)
    exc = _refusal(inbox)
    assert str(above) in exc.problem and "others may replace the inbox" in exc.problem
    above.chmod(0o1777)  # sticky: others cannot rename what is not theirs
    assert check_inbox(inbox, owners_for("appliance-channel"), deep=True)


@needs_root
def test_an_inbox_owned_by_another_uid_is_refused_naming_owner_expected_owner_and_chown(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    os.chown(inbox, THROWAWAY_UID, -1)
    exc = _refusal(inbox)
    assert f"uid {THROWAWAY_UID}" in exc.problem and "expected owner" in exc.problem and "root" in exc.problem
    assert exc.remedy.startswith("chown -R ") and str(inbox) in exc.remedy


@needs_root
def test_a_file_planted_in_the_inbox_by_another_uid_is_refused(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    planted = inbox / "bundles" / "planted.manifest.json"
    planted.write_bytes(b"{}")
    planted.chmod(0o640)
    os.chown(planted, THROWAWAY_UID, -1)
    assert str(planted) in _refusal(inbox).problem


def test_the_replay_memory_only_rises_and_a_damaged_one_fails_closed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    memory = ImportedHeads(storage)
    assert memory.seen("p/channels/stable/") == 0
    memory.raise_seen("p/channels/stable/", 3)
    memory.raise_seen("p/channels/stable/", 2)
    assert memory.seen("p/channels/stable/") == 3 and memory.seen("p/channels/beta/") == 0
    (tmp_path / layout.CHANNEL_SEEN).write_bytes(b'{"p/channels/stable/": "3"}')
    with pytest.raises(StorageError, match="damaged"):
        memory.seen("p/channels/stable/")


def test_node_json_names_the_channel_user_the_inbox_belongs_to() -> None:
    from appliance.errors import ConfigError
    from appliance.node.config import NodeConfig

    assert NodeConfig().channel_user == "appliance-channel"
    for bad in ("", "a/b", "x:y"):
        with pytest.raises(ConfigError, match="channel_user"):
            NodeConfig(channel_user=bad)


# --- the layout's files are files, head.json is judged before it is read (trial 4, N2 and N3) ------------


def test_the_inbox_layout_says_where_a_file_and_where_a_directory_belong() -> None:
    from appliance.format.inbox import expected_kind

    fan = "ab" + "0" * 62
    assert expected_kind("head.json") == "file"
    assert expected_kind("bundles") == expected_kind("blobs") == expected_kind("blobs/ab") == "dir"
    assert expected_kind("bundles/1-x.json") == expected_kind(f"blobs/ab/{fan}") == "file"
    assert expected_kind("notes") is expected_kind("blobs/zz") is expected_kind("bundles/a/b") is None


@pytest.mark.parametrize(
    ("mode", "expect", "kind"),
    [(stat.S_IFDIR | 0o750, "file", "dir"), (stat.S_IFREG | 0o640, "dir", "type"), (stat.S_IFLNK | 0o777, "dir",
     "symlink"), (stat.S_IFIFO | 0o640, "file", "type"), (stat.S_IFSOCK | 0o640, None, "type")],
)  # fmt: skip
def test_an_entry_of_the_wrong_kind_for_its_place_is_refused(mode: int, expect: str, kind: str) -> None:
    found = inbox_entry_problem("x", mode=mode, uid=990, owners=OWNERS, expect=expect)
    assert found is not None and found[1] == kind
    assert inbox_entry_problem("x", mode=stat.S_IFREG | 0o640, uid=990, owners=OWNERS, expect="file") is None


def test_the_remedies_for_a_linked_inbox_and_a_directory_in_a_files_place() -> None:
    from appliance.format.inbox import inbox_remedy

    linked = inbox_remedy("/var/lib/in", "/var/lib/in", "symlink", OWNERS)
    assert "rm /var/lib/in && install -d -m 2750 -o appliance-channel /var/lib/in" in linked
    assert "d /var/lib/in 2750 appliance-channel appliance" in linked
    assert "`rm -r /var/lib/in/head.json`" in inbox_remedy("/var/lib/in", "/var/lib/in/head.json", "dir", OWNERS)
    assert "`rm /var/lib/in/head.json`" in inbox_remedy("/var/lib/in", "/var/lib/in/head.json", "symlink", OWNERS)


def _head_refusal(inbox: Path) -> InboxPermissionError:
    from appliance.persist.inbox_guard import read_head

    with pytest.raises(InboxPermissionError) as info:
        read_head(inbox, owners_for("appliance-channel"))
    assert info.value.exit_code == 90 and str(inbox / "head.json") in info.value.problem
    return info.value


def test_the_staged_head_is_read_with_its_identity_and_a_new_hand_off_has_another(tmp_path: Path) -> None:
    from appliance.persist.inbox_guard import read_head

    inbox = _inbox(tmp_path)
    owners = owners_for("appliance-channel")
    data, identity = read_head(inbox, owners) or (b"", "")
    assert data == b"{}"
    again = inbox / "head.tmp"
    again.write_bytes(b"{}")
    again.chmod(0o640)
    again.rename(inbox / "head.json")  # the channel program writes it again (same bytes, a new file)
    data2, identity2 = read_head(inbox, owners) or (b"", "")
    assert data2 == data and identity2 != identity  # the watchdog tries a new hand-off at once
    (inbox / "head.json").unlink()
    assert read_head(inbox, owners) is None


def test_a_head_json_that_is_a_link_a_directory_or_a_fifo_is_refused_before_it_is_read(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    head = inbox / "head.json"
    secret = tmp_path / "device.key"
    secret.write_bytes(b"secret")
    head.unlink()
    head.symlink_to(secret)
    assert "symbolic link" in _head_refusal(inbox).problem
    head.unlink()
    head.mkdir()
    exc = _head_refusal(inbox)
    assert "is a directory" in exc.problem and f"`rm -r {head}`" in exc.remedy
    head.rmdir()
    os.mkfifo(head, 0o640)
    assert "neither a regular file nor a directory" in _head_refusal(inbox).problem  # and never blocks on it
    head.unlink()
    head.write_bytes(b"{}")
    head.chmod(0o666)
    assert "0666" in _head_refusal(inbox).problem


def test_a_staged_bundle_that_is_a_directory_is_refused_by_the_deep_check(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    (inbox / "bundles" / "1-x.json").mkdir(mode=0o750)
    exc = _refusal(inbox)
    assert "is a directory" in exc.problem and "`rm -r " in exc.remedy


def test_a_relative_channel_inbox_is_made_absolute_without_following_its_last_component(tmp_path: Path) -> None:
    from appliance.node.config import NodeConfig

    (tmp_path / "real").mkdir()
    (tmp_path / "inbox").symlink_to("real")
    (tmp_path / "store").symlink_to("real")
    base = tmp_path.resolve()
    config = NodeConfig(channel_inbox="inbox", store="store").resolved(base)
    assert config.channel_inbox == str(base / "inbox")  # refused as a link, named as configured
    assert config.store == str(base / "store")  # every path lexically: never through the links it names


# --- a damaged staging: its remedy, and when the channel program verifies it again ---------------------------


def test_a_staged_bundle_missing_or_not_the_heads_is_named() -> None:
    from appliance.format.digest import Digest
    from appliance.format.inbox import staged_bundle_problem
    from appliance.format.portable import BundleName

    name = BundleName(7, Digest.of(b"bundle"))
    assert staged_bundle_problem(name, b"bundle", "/in") is None
    assert "is missing" in (staged_bundle_problem(name, None, "/in/") or "")
    assert f"/in/{name.key} is not the one the head names" in (staged_bundle_problem(name, b"bundl", "/in") or "")


def test_a_damaged_staging_is_retried_with_a_remedy_about_the_channel_program_not_an_export() -> None:
    from appliance.errors import FrameError, PartialCheckpointError, SourceUnavailableError
    from appliance.format.inbox import damaged_staging, restage_remedy, retry_import

    for exc in (PartialCheckpointError("x"), FrameError("x"), SourceUnavailableError("x")):
        assert damaged_staging(exc) and retry_import(exc)
    assert not damaged_staging(HeadError("x")) and not damaged_staging(StorageError("x"))
    remedy = restage_remedy("/var/lib/in")
    assert "export" not in remedy and "/var/lib/in" in remedy and "`appliance channel follow`" in remedy
    assert "disk" in remedy


def test_a_verified_staging_is_verified_again_when_anything_changed_or_an_hour_passed() -> None:
    from appliance.format.inbox import REVERIFY_S, VerifiedStaging

    memo = VerifiedStaging()
    assert not memo.holds(("seal",), 0.0)  # nothing verified yet: verify
    memo.remember(("seal",), 100.0)
    assert memo.holds(("seal",), 100.0 + REVERIFY_S - 1)
    assert not memo.holds(("other",), 101.0)  # a staged file or the store's records changed
    assert not memo.holds(("seal",), 100.0 + REVERIFY_S)  # damage a file's metadata does not show (bit rot)
    assert not memo.holds(("seal",), 99.0)  # a clock that went back
