"""The portable layout's names and the import decision, over their whole input space."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import OlderCheckpointError, RollbackError
from appliance.format.digest import Digest
from appliance.format.portable import (
    BundleName,
    LocalCheckpoint,
    blob_key,
    bundle_key,
    decide_import,
    parse_bundle_name,
    required_blobs,
)
from tests.unit.factories import digest, manifest

pytestmark = pytest.mark.unit

digests = st.binary(min_size=32, max_size=32).map(lambda b: Digest(b.hex()))
generations = st.integers(1, 2**63 - 1)


@given(generations, digests)
def test_bundle_names_round_trip_and_survive_case_folding(gen: int, d: Digest) -> None:
    key = bundle_key(gen, d)
    name = key.rpartition("/")[2]
    assert parse_bundle_name(name) == BundleName(gen, d)
    assert key == key.lower() and key.isascii() and len(name) <= 90
    assert parse_bundle_name(name.upper()) is None  # an upper-cased copy is not silently accepted


@given(digests)
def test_blob_keys_fan_out_by_two_hex_digits(d: Digest) -> None:
    key = blob_key(d)
    assert key == f"blobs/{d.hex[:2]}/{d.hex}" and key == key.lower()


@pytest.mark.parametrize(
    "name",
    ["", "x.json", f"{0:020d}-{'a' * 64}.json", f"{1:019d}-{'a' * 64}.json", f"{1:020d}-{'A' * 64}.json",
     f"{1:020d}-{'a' * 64}.json.tmp", f"../{1:020d}-{'a' * 64}.json"],
)  # fmt: skip
def test_junk_bundle_names_are_ignored(name: str) -> None:
    assert parse_bundle_name(name) is None


def test_required_blobs_lists_every_frame_and_base_once() -> None:
    m = manifest()
    blobs = required_blobs(m)
    assert {b.digest for b in blobs} == set(m.frame_index())
    assert len(blobs) == len(set(m.frame_index())) and all(b.kind == "frame" for b in blobs)


local_cps = st.lists(
    st.builds(LocalCheckpoint, st.sampled_from("AB"), st.integers(1, 20), digests, st.booleans()), max_size=5
)


@given(st.integers(1, 25), digests, st.integers(0, 25), local_cps, st.sets(st.integers(1, 25), max_size=5))
def test_decide_import_is_total_and_never_goes_backwards(
    gen: int, d: Digest, floor: int, local: list[LocalCheckpoint], extra_seen: set[int]
) -> None:
    seen = {c.generation for c in local} | extra_seen
    try:
        decision = decide_import(gen, d, floor=floor, local=local, seen=seen)
    except RollbackError:
        assert gen < floor
        return
    except OlderCheckpointError:
        return
    if decision.already:
        assert any(c.generation == gen and c.manifest_digest == d and c.complete for c in local)
        return
    assert gen >= floor
    others = [c.generation for c in local if not (c.generation == gen and c.manifest_digest == d)]
    assert all(gen > g for g in others)


def test_decide_import_cases() -> None:
    a, b = digest("a"), digest("b")
    have = [LocalCheckpoint("A", 3, a)]
    assert decide_import(3, a, floor=0, local=have, seen={3}).already
    assert not decide_import(4, b, floor=0, local=have, seen={3}).already
    with pytest.raises(OlderCheckpointError):
        decide_import(3, b, floor=0, local=have, seen={3})
    with pytest.raises(OlderCheckpointError):
        decide_import(5, b, floor=0, local=have, seen={3, 5})  # 5 names a leftover here
    with pytest.raises(RollbackError):
        decide_import(4, b, floor=9, local=have, seen={3})
    damaged = [LocalCheckpoint("A", 3, a, complete=False)]
    assert not decide_import(3, a, floor=0, local=damaged, seen={3}).already  # re-import repairs
