"""Format v2 model-directory records: assets, shards, header namespace, index rules (pure, torch-free).

Property tests over each rule's input space; the inputs the issue reported stay as examples.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.errors import ManifestError
from appliance.format.canonical import canonical_bytes
from appliance.format.directory import (
    EMPTY_WEIGHT_MAP,
    INDEX_NAME,
    AssetEntry,
    ShardEntry,
    check_header_metadata,
    check_label,
    index_defect,
    left_out_shards,
    renumber_shards,
    source_header_metadata,
)
from appliance.format.dtypes import BY_SAFETENSORS, DTYPES, from_safetensors, safetensors_code
from appliance.format.manifest import FORMAT_VERSION, Manifest
from tests.unit.factories import digest, frame, manifest

pytestmark = pytest.mark.unit


def asset(path: str, size: int = 64, *, tag: str = "", executable: bool = False) -> AssetEntry:
    frames = (frame(f"asset-{path}{tag}", raw_size=size, codec="zstd-1"),) if size else ()
    return AssetEntry(path, size, digest(f"file-{path}{tag}"), frames, executable)


def v2(**overrides: Any) -> Manifest:
    fields: dict[str, Any] = {
        "assets": (asset("config.json"), asset("tok/tokenizer.json", executable=True), asset("empty.txt", 0)),
        "shards": (
            ShardEntry("model-00001-of-00002.safetensors", ("w", "scalar"), {"format": "pt"}),
            ShardEntry("model-00002-of-00002.safetensors", ("empty",), {"format": "pt", "k": "v"}),
        ),
        "index_metadata": {"total_size": 136},
    }
    fields.update(overrides)
    return manifest(**fields)


def test_writer_writes_v2_and_a_v1_manifest_keeps_its_bytes() -> None:
    assert FORMAT_VERSION == 2 and manifest().to_dict()["version"] == 2
    old = manifest(version=1)
    d = old.to_dict()
    assert d["version"] == 1 and "assets" not in d
    assert Manifest.from_dict(d).version == 1 and canonical_bytes(Manifest.from_dict(d).to_dict()) == canonical_bytes(d)
    assert manifest().to_dict() | {"version": 1} == d  # v2 without optional fields differs only in version


def test_v2_records_round_trip_in_value_and_bytes() -> None:
    m = v2()
    d = m.to_dict()
    assert Manifest.from_dict(d) == m and canonical_bytes(Manifest.from_dict(d).to_dict()) == canonical_bytes(d)
    assert {f.digest for a in m.assets for f in a.frames} <= set(m.frame_index())  # asset frames are frames


def _mutated(path: list[Any], value: Any, base: Manifest | None = None) -> dict[str, Any]:
    d = copy.deepcopy((base or v2()).to_dict())
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (["assets", 0, "path"], "../etc/passwd", "looks like a path"),
        (["assets", 0, "path"], "/etc/passwd", "looks like a path"),
        (["assets", 0, "path"], "a/./b", "looks like a path"),
        (["assets", 0, "path"], "a\\b", "backslash"),
        (["assets", 0, "path"], "e\u0301.json", "NFC"),
        (["assets", 0, "path"], "model-00001-of-00002.safetensors", "names a shard"),
        (["assets", 0, "path"], INDEX_NAME, "names a shard or the index"),
        (["assets", 0, "path"], "tok", "both a file and a directory"),
        (["assets", 0, "path"], "empty.txt", "listed twice"),
        (["assets", 0, "size"], 65, "cover"),
        (["assets", 0, "executable"], False, "executable"),
        (["assets", 0, "frames", 0, "codec"], "bg2+zstd-1", "byte streams"),
        (["assets"], [], "non-empty"),
        (["shards"], [], "non-empty"),
        (["index_metadata"], {}, "non-empty"),
        (["shards", 0, "file"], "../x.safetensors", "plain"),
        (["shards", 0, "file"], "x.bin", "plain"),
        (["shards", 1, "file"], "model-00001-of-00002.safetensors", "same file"),
        (["shards", 0, "tensors"], ["w"], "exactly once"),
        (["shards", 0, "tensors"], ["w", "scalar", "empty"], "exactly once"),
        (["shards", 0, "header_metadata"], {"appliance.generation": "1"}, "reserved"),
        (["shards", 0, "header_metadata"], {"format": 1}, "strings"),
    ],
)
def test_directory_record_violations_are_refused(path: list[Any], value: Any, needle: str) -> None:
    with pytest.raises(ManifestError, match=needle):
        Manifest.from_dict(_mutated(path, value))


@pytest.mark.parametrize("field", ["assets", "shards", "index_metadata"])
def test_a_v1_manifest_cannot_carry_v2_fields(field: str) -> None:
    d = v2().to_dict() | {"version": 1}
    d = {k: v for k, v in d.items() if k in manifest(version=1).to_dict() or k == field}
    with pytest.raises(ManifestError, match="unknown field"):
        Manifest.from_dict(d)
    with pytest.raises(ManifestError, match="v1 manifest cannot"):
        dataclasses.replace(v2(), version=1)


_PATH_ALPHABET = st.sampled_from(["a", "B", "é", "e\u0301", ".", "..", "/", "\\", "\x00", "\n", ":", " ", "~"])


@settings(max_examples=600)
@given(st.lists(_PATH_ALPHABET, min_size=1, max_size=10).map("".join))
@example("../../etc/passwd")
@example("a/../../b")
@example("C:/x")
def test_an_accepted_label_is_a_normalised_path_that_stays_inside_its_directory(text: str) -> None:
    try:
        check_label(text, "asset path")
    except ManifestError:
        return
    assert posixpath.normpath(text) == text and not text.startswith("/")
    assert posixpath.normpath(posixpath.join("/root", text)).startswith("/root/")
    assert "\\" not in text and "\x00" not in text


_NAMES = st.sampled_from(["a", "b", "c", "d"])
_SHARDS = st.sampled_from(["s1.safetensors", "s2.safetensors"])


@given(st.dictionaries(_NAMES, _SHARDS), st.dictionaries(_NAMES, _SHARDS))
@example({}, {"a": "s1.safetensors"})  # an empty map: a signed checkpoint of nothing, before
@example({"a": "s1.safetensors", "ghost": "s1.safetensors"}, {"a": "s1.safetensors"})  # silent loss, before
def test_an_index_is_accepted_exactly_when_it_matches_the_shards(weight_map: dict[str, str], held: dict[str, str]) -> None:  # fmt: skip
    defect = index_defect(weight_map, held)
    assert (defect is None) == (bool(weight_map) and weight_map == held)
    if defect is not None:
        what, names = defect
        assert names or what == EMPTY_WEIGHT_MAP
        for name in names:  # every named tensor really is one the two sides disagree on
            assert weight_map.get(name) != held.get(name)


def _numbered(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


@settings(max_examples=400)
@given(
    st.integers(1, 7).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.integers(1, n + 2), min_size=1),  # indexed numbers (n+1, n+2: outside the set)
            st.sets(st.integers(1, n + 2)),  # numbered files present beside the index
            st.booleans(),  # model.safetensors present too
            st.booleans(),  # consolidated.safetensors present too (another format's file)
        )
    )
)
@example((3, {1, 2}, {1, 2, 3}, False, False))  # the new-user trial: index omits the whole last shard
@example((3, {1, 2}, {1, 2}, False, False))  # a subset restore's index before: -of-00003 with 2 shards
@example((2, {1, 2}, {1, 2}, True, True))
def test_an_index_leaves_out_no_file_of_its_shard_set(case: tuple[int, set[int], set[int], bool, bool]) -> None:
    n, indexed, present, single, consolidated = case
    indexed_names = [_numbered(i, n) for i in indexed]
    files = [_numbered(i, n) for i in present | indexed] + ["model.safetensors"] * single
    files += ["consolidated.safetensors"] * consolidated
    expected = {_numbered(i, n) for i in range(1, n + 1) if i not in indexed}  # gaps, present or not
    expected |= {_numbered(i, n) for i in indexed | present if i > n}  # outside the set, named or present
    expected |= {"model.safetensors"} if single else set()  # loaders would prefer it to the index
    names, total = left_out_shards(indexed_names, files)
    assert total == len(expected) and names == sorted(expected)[:5]
    assert "consolidated.safetensors" not in names


@given(
    st.integers(1, 6).flatmap(lambda n: st.lists(st.integers(1, n), unique=True).map(lambda kept: (n, sorted(kept))))
)
@example((3, [1, 2]))  # the trial's subset: -of-00003 with two shards written, before
@example((3, [2]))
def test_the_shards_a_restore_writes_are_numbered_whole(case: tuple[int, list[int]]) -> None:
    n, kept = case
    names = renumber_shards([_numbered(i, n) for i in kept] + ["extra.safetensors"])
    assert names == [_numbered(i, len(kept)) for i in range(1, len(kept) + 1)] + ["extra.safetensors"]
    assert left_out_shards(names, names) == ([], 0)
    if len(kept) == n:  # a whole set keeps its recorded names
        assert names[:-1] == [_numbered(i, n) for i in kept]


def test_shard_names_that_would_collide_after_renumbering_get_fresh_names() -> None:
    names = renumber_shards([_numbered(1, 2), _numbered(1, 3)])  # two sets of one file each: both 1-of-1
    assert names == [_numbered(1, 2), _numbered(2, 2)] and left_out_shards(names, names) == ([], 0)


def test_an_index_claiming_a_huge_shard_set_is_counted_not_enumerated() -> None:
    names, total = left_out_shards(["model-1-of-99999999999.safetensors"], [])
    assert total == 99999999998 and names[0] == "model-2-of-99999999999.safetensors" and len(names) == 5


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=12), max_size=8))
@example({"format": "pt", "appliance.generation": "3", "appliance.metadata": "{}"})
def test_source_headers_never_keep_appliance_keys_and_keep_every_other_key(header: dict[str, str]) -> None:
    kept = source_header_metadata(header)
    assert not any(k.startswith("appliance.") for k in kept)
    assert kept == {k: v for k, v in header.items() if not k.startswith("appliance.")}
    assert check_header_metadata(kept, "h") == kept


def test_one_dtype_table_names_a_safetensors_code_for_every_dtype_both_sides_know() -> None:
    for name, dtype in DTYPES.items():
        if dtype.safetensors is None:
            with pytest.raises(ValueError, match=f"no code for dtype {name}"):
                safetensors_code(name)
            continue
        assert BY_SAFETENSORS[dtype.safetensors] is dtype
        assert from_safetensors(dtype.safetensors, (2, 4 * dtype.values_per_element)) == (dtype, (2, 4))
    for code in ("F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F4"):  # refused by commit before
        assert code in BY_SAFETENSORS
    with pytest.raises(ValueError, match="F6_E2M3 has no torch type"):
        from_safetensors("F6_E2M3", (4,))


@pytest.mark.parametrize(
    ("label", "says"),
    [
        ("w\udcff.bin", "is not valid UTF-8"),  # a file name's undecodable byte (surrogate escape)
        ("a\\b", "contains a backslash"),
        ("a\x01b", "contains control or format characters"),
        ("a\u202eb", "contains control or format characters"),  # right-to-left override
        ("a\\\x01", "contains control or format characters and a backslash"),
    ],
)
def test_an_unprintable_label_is_refused_saying_which_kind_of_character(label: str, says: str) -> None:
    """Trial 4: invalid UTF-8 was described as "control characters or backslashes"."""
    with pytest.raises(ManifestError, match=says):
        check_label(label, "asset name")
