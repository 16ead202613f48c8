"""Manifest schema (v2; v1 still read): round trips and every structural rule a reader relies on."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from appliance.errors import LimitExceededError, ManifestError
from appliance.format.canonical import canonical_bytes
from appliance.format.manifest import Manifest, validate_tensor_name
from tests.unit.factories import digest, frame, manifest

pytestmark = pytest.mark.unit


def test_round_trip_preserves_value_and_bytes() -> None:
    m = manifest()
    d = m.to_dict()
    assert Manifest.from_dict(d) == m
    assert canonical_bytes(Manifest.from_dict(d).to_dict()) == canonical_bytes(d)


def test_digest_changes_with_any_field() -> None:
    assert manifest().digest() != manifest(generation=4).digest()
    assert manifest().digest() != manifest(metadata={"step": 8}).digest()


def test_totals_are_derived_and_checked() -> None:
    d = manifest().to_dict()
    assert d["totals"]["raw_bytes"] == 2 * 32 * 2 + 8
    d["totals"]["raw_bytes"] += 1
    with pytest.raises(ManifestError, match="totals"):
        Manifest.from_dict(d)


def _mutated(path: list[Any], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(manifest().to_dict())
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (["version"], 4, "not supported"),
        (["version"], 0, "not supported"),
        (["version"], True, "not supported"),
        (["format"], "other", "not a checkpoint manifest"),
        (["hash"], "md5", "unknown hash"),
        (["generation"], 0, "generation"),
        (["generation"], 2**63, "generation"),
        (["generation"], True, "generation"),
        (["frame_size"], 17, "frame_size"),
        (["policy"], "weird", "policy"),
        (["model"], "", "model"),
        (["parent"], "../etc/passwd", "digest"),
        (["surprise"], 1, "unknown field"),
        (["metadata"], [], "metadata"),
        (["tensors", 0, "dtype"], "float128", "unknown dtype"),
        (["tensors", 0, "shape"], [2, -32], "dimension"),
        (["tensors", 0, "shape"], [2, 33], "frames cover"),
        (["tensors", 0, "shape"], [1] * 65, "dims"),
        (["tensors", 0, "frames", 0, "codec"], "lz4", "unknown codec"),
        (["tensors", 0, "frames", 0, "codec"], "bg4+zstd-1", "does not fit dtype"),
        (["tensors", 0, "frames", 0, "raw_size"], 65, "whole number"),
        (["tensors", 0, "frames", 0, "digest"], "A" * 64, "digest"),
        (["tensors", 0, "frames", 0, "size"], -1, "size"),
        (["tensors", 0, "frames", 1, "base"], _DELETE, "xor codec needs base"),
        (["tensors", 0, "frames", 1, "base"], digest("nowhere").hex, "not in the manifest"),
        (["tensors", 0, "frames", 1, "depth"], 2, "chain depth"),
        (["bases"], [], "not in the manifest"),
        (["tensors", 1, "name"], "w", "duplicate tensor names"),
    ],
)
def test_structural_violations_are_refused(path: list[Any], value: Any, needle: str) -> None:
    with pytest.raises(ManifestError, match=needle):
        Manifest.from_dict(_mutated(path, value))


def test_extraneous_base_is_refused() -> None:
    d = manifest().to_dict()
    d["bases"].append(frame("unused").to_dict())
    with pytest.raises(ManifestError, match="not \\(only\\) a delta base"):
        Manifest.from_dict(d)


def test_same_digest_described_differently_is_refused() -> None:
    d = manifest().to_dict()
    d["tensors"][0]["frames"][0]["digest"] = d["tensors"][1]["frames"][0]["digest"]
    with pytest.raises(ManifestError):
        Manifest.from_dict(d)


def test_metadata_over_the_cap_is_refused() -> None:
    with pytest.raises(LimitExceededError):
        manifest(metadata={"blob": "x" * (5 * 1024 * 1024)})


@pytest.mark.parametrize(
    "name",
    ["", "../x", "a/../../b", "/etc/passwd", "a\x00b", "a\\b", "C:evil", "a//b", "./a", "a/.", "x" * 2000,
     "line\nbreak", "cafe\u0301"],
)  # fmt: skip
def test_hostile_tensor_names_are_refused(name: str) -> None:
    with pytest.raises(ManifestError):
        validate_tensor_name(name)


@pytest.mark.parametrize("name", ["model.layers.0.weight", "encoder/block_1/kernel", "ünïcödé", "ns:weight"])
def test_ordinary_tensor_names_are_accepted(name: str) -> None:
    assert validate_tensor_name(name) == name
