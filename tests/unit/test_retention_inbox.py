"""Pure rules of bucket retention (``format.retention``) and of the fleet channel's inbox (``format.inbox``)."""

from __future__ import annotations

import pytest

from appliance.errors import (
    ChannelRoleError,
    FrameError,
    HeadError,
    OlderCheckpointError,
    PartialCheckpointError,
    RollbackError,
    SourceUnavailableError,
    StorageFullError,
    UsageError,
)
from appliance.format.digest import Digest
from appliance.format.inbox import blobs_to_stage, retry_import, stale_keys
from appliance.format.portable import BlobRef, BundleName, blob_key
from appliance.format.retention import BucketObject, blobs_to_delete, bundles_to_keep, parse_blob_key

pytestmark = pytest.mark.unit


def d(c: str) -> Digest:
    return Digest(c * 64)


def b(generation: int, c: str = "a") -> BundleName:
    return BundleName(generation, d(c))


def test_parse_blob_key_accepts_only_the_layouts_exact_names() -> None:
    assert parse_blob_key(blob_key(d("c"))) == d("c")
    for junk in (f"blobs/cd/{'c' * 64}", f"blobs/cc/{'c' * 64}.tmp", f"blobs/cc/{'C' * 64}", "blobs/cc", "head.json",
                 f"x/blobs/cc/{'c' * 64}", f"blobs/cc/{'c' * 63}"):  # fmt: skip
        assert parse_blob_key(junk) is None, junk


def test_bundles_kept_are_the_newest_the_heads_and_those_at_or_above_the_floor() -> None:
    bundles = [b(g) for g in range(1, 7)]
    kept, pruned = bundles_to_keep(bundles, head=b(6), floor=100, keep=2)
    assert [x.generation for x in kept] == [5, 6] and [x.generation for x in pruned] == [1, 2, 3, 4]
    kept, _ = bundles_to_keep(bundles, head=b(2), floor=100, keep=1)  # the head lags: its bundle stays
    assert [x.generation for x in kept] == [2, 6]
    kept, pruned = bundles_to_keep(bundles, head=b(6), floor=3, keep=1)  # restorable by the node: kept
    assert [x.generation for x in kept] == [3, 4, 5, 6] and [x.generation for x in pruned] == [1, 2]
    with pytest.raises(UsageError):
        bundles_to_keep(bundles, head=b(6), floor=0, keep=0)


def test_blobs_deleted_only_when_no_kept_bundle_needs_them_and_they_are_old_or_were_pruned() -> None:
    def obj(c: str, modified: float) -> BucketObject:
        return BucketObject(blob_key(d(c)), 10, modified)

    blobs = [obj("1", 50), obj("2", 50), obj("3", 150), obj("4", 150), obj("5", 50), BucketObject("notes", 1, 0)]
    doomed = blobs_to_delete(blobs, kept_refs={d("1")}, pruned_refs={d("1"), d("2"), d("4")}, cutoff=100)
    # 1: shared with a kept bundle; 2: pruned-only; 3: young and unnamed (a concurrent upload); 4: young but
    # named by a pruned bundle; 5: old and unnamed (an orphan); "notes": not a blob of ours
    assert {parse_blob_key(x.key) for x in doomed} == {d("2"), d("4"), d("5")}


def test_inbox_stages_what_the_node_lacks_and_tidies_bundles_before_blobs() -> None:
    refs = [BlobRef("frame", d(c), 4) for c in "123"]
    assert blobs_to_stage(refs, {d("2")}) == [refs[0], refs[2]]
    present = [blob_key(d("1")), blob_key(d("9")), b(2).key, b(3).key, "head.json"]
    assert stale_keys(present, b(3).key, refs[:1]) == [b(2).key, blob_key(d("9"))]
    assert stale_keys(present, None, ()) == [present[2], present[3], present[0], present[1]]


def test_the_writer_retries_failures_of_the_medium_and_remembers_refusals() -> None:
    for exc in (SourceUnavailableError("x"), StorageFullError("x"), FrameError("x"), PartialCheckpointError("x")):
        assert retry_import(exc), exc
    for exc in (HeadError("x"), ChannelRoleError("x"), RollbackError("x"), OlderCheckpointError("x")):
        assert not retry_import(exc), exc
