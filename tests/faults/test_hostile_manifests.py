"""Hostile manifests, envelopes, commit records and names: only typed errors, never a crash.

Structured fuzzing (hypothesis): a valid manifest is mutated field by field (wrong types, huge
and negative numbers, unicode, deep nesting, duplicated frames) and *signed with the trusted
key*, so every input reaches the parser behind the signature check. Envelopes and records are
mutated as bytes. Each input must verify or raise an ``IntegrityError`` subclass; nothing else.
Long runs: ``tests/faults/fuzz_atheris.py`` (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import IntegrityError, ManifestError, UsageError
from appliance.format.commit import CommitRecord
from appliance.format.digest import Digest
from appliance.format.manifest import validate_tensor_name
from appliance.signing import SigningKey, TrustStore, sign_manifest, verify_bundle
from appliance.store.encode import TensorSource
from appliance.store.store import Store

from . import counts
from .boot import BOOT
from .forge import sign_predicate
from .model import MODEL_ID, History, Keys, empty_store_storage, make_config

pytestmark = pytest.mark.faults

FUZZ = settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

_SIGNER = SigningKey.generate()
_TRUST = TrustStore().with_key(_SIGNER.public)


def _valid_manifest_dict() -> dict[str, Any]:
    rec_store = Store(empty_store_storage(), make_config(), _TRUST)
    history = History(seed=11)
    rec_store.commit(history.sources(1), [_SIGNER])
    rec_store.commit(history.sources(2), [_SIGNER])  # has delta frames and bases
    return rec_store.select().opened.verified.manifest.to_dict()


BASE = _valid_manifest_dict()

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "../x", "/etc/passwd", "a\x00b", "e\u0301", "\ud800", "zstd-99", "f" * 64, "F" * 64]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


PATHS = [p for p in _paths(BASE) if p]


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
            if action == "replace":
                parent[path[-1]] = draw(json_values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, list):
                parent.append(copy.deepcopy(parent[path[-1]]))
            else:
                parent[path[-1] + "_"] = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    return doc


@FUZZ
@given(mutated_manifests())
def test_fuzzed_signed_manifests_verify_or_raise_typed_errors(doc: dict[str, Any]) -> None:
    """A trusted signature over any mutated manifest: verified, or an IntegrityError; nothing else."""
    counts.add("hostile.cases")
    bundle = sign_predicate(doc, [_SIGNER])
    try:
        verified = verify_bundle(bundle, _TRUST, expected_model=MODEL_ID)
    except IntegrityError:
        return
    assert verified.manifest.to_dict() == doc  # accepted only if it is exactly a valid manifest


@pytest.mark.slow
@settings(max_examples=50_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_nightly_fuzzed_signed_manifests(doc: dict[str, Any]) -> None:
    """Nightly: 50,000 mutated manifests behind a trusted signature."""
    test_fuzzed_signed_manifests_verify_or_raise_typed_errors.hypothesis.inner_test(doc)  # type: ignore[attr-defined]


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_fuzzed_envelope_bytes_raise_only_typed_errors(data: st.DataObject) -> None:
    """Byte-level mutations of a signed bundle (flip, cut, insert, splice) never escape as crashes."""
    counts.add("hostile.cases")
    from appliance.format.manifest import Manifest

    bundle = bytearray(sign_manifest(Manifest.from_dict(BASE), [_SIGNER]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = data.draw(st.integers(0, max(0, len(bundle) - 1)))
        if op == "flip":
            bundle[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del bundle[at : at + data.draw(st.integers(1, 64))]
        elif op == "insert":
            bundle[at:at] = data.draw(st.binary(min_size=1, max_size=32))
        else:
            bundle[at:at] = bundle[: data.draw(st.integers(1, 256))]
    with contextlib.suppress(IntegrityError):
        verify_bundle(bytes(bundle), _TRUST, expected_model=MODEL_ID)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.builds(lambda v: repr(v).encode(), json_values))
def test_fuzzed_commit_records_raise_only_typed_errors(data: bytes) -> None:
    """Arbitrary bytes as a commit record: parsed only if byte-exact canonical, else ManifestError."""
    counts.add("hostile.cases")
    try:
        record = CommitRecord.from_bytes(data)
    except IntegrityError:
        return
    assert record.to_bytes() == data


def test_lone_surrogates_from_disk_are_typed_errors_not_crashes(keys: Keys) -> None:
    """JSON escapes like \\ud800 in an unsigned commit record or a signed manifest: typed refusals."""
    record = CommitRecord("A", 3, Digest.of(b"x"), 5, Digest.of(b"y"), "2026")
    hostile = record.to_bytes().replace(b'"2026"', b'"\\ud800"')
    with pytest.raises(ManifestError):
        CommitRecord.from_bytes(hostile)
    doc = copy.deepcopy(BASE)
    doc["metadata"] = {"note": "\ud800"}
    with pytest.raises(ManifestError):
        verify_bundle(sign_predicate(doc, [_SIGNER]), _TRUST, expected_model=MODEL_ID)
    store = Store(empty_store_storage(), make_config(), keys.trust)
    with pytest.raises(UsageError):
        store.commit(History(1).sources(1), [keys.signer], {"note": "\ud800"})
    counts.add("hostile.cases", 3)


def test_a_planted_record_with_a_lone_surrogate_never_crashes_boot(keys: Keys) -> None:
    """Boot treats such a record as not committed and restores the honest checkpoint."""
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    history = History(1)
    result, _ = store.commit(history.sources(1), [keys.signer])
    record = CommitRecord("B", 9, Digest.of(b"x"), 5, Digest.of(b"y"), "2026").to_bytes()
    storage.write_new("B/checkpoints/00000000000000000009.commit.json", record.replace(b'"2026"', b'"\\udfff"'))
    outcome = BOOT(storage, make_config(), keys.trust)
    assert outcome.generation == result.generation and outcome.contents == history.digest(1)
    counts.add("hostile.cases")


TRAVERSAL_NAMES = [
    "../x", "../../etc/passwd", "/etc/passwd", "a/../../b", "a/./b", "./a", "a//b", "a/", "/", ".", "..",
    "", "a\x00b", "..\\x", "a\\b", "C:\\x", "C:x", "c:/x", "\x7f", "a\nb", "a\tb", "\u202ex", "e\u0301",
    "x" * 1025, "\ud800", "a/..", "../", "./", "....//", "%2e%2e/x", "..%2fx", "\u2024\u2024/x", "a/\x00",
    "//server/share", "\\\\server\\share", "a\rb", "\x1b[31m", "a\u0000", "/./", "x/../y",
]  # fmt: skip


@pytest.mark.parametrize("name", TRAVERSAL_NAMES, ids=range(len(TRAVERSAL_NAMES)))
def test_path_like_tensor_names_are_refused_and_create_nothing(name: str, tmp_path: Path, keys: Keys) -> None:
    """A tensor name that looks like a path is refused on commit and in a signed manifest; no file escapes."""
    counts.add("hostile.cases")
    safe_as_label = _is_plain_label(name)
    if not safe_as_label:
        with pytest.raises(ManifestError):
            validate_tensor_name(name)
    root = tmp_path / "store"
    store = Store.init(root, [keys.signer.public], make_config())
    before = sorted(p for p in tmp_path.rglob("*"))
    source = TensorSource(name, "uint8", (16,), lambda: np.zeros(16, np.uint8))
    if safe_as_label:
        store.commit([source], [keys.signer])
    else:
        with pytest.raises((UsageError, ManifestError)):
            store.commit([source], [keys.signer])
    created = [p for p in tmp_path.rglob("*") if p not in before]
    assert all(root in p.parents for p in created), f"a file was created outside the store: {created}"
    assert all("frames" in p.parts or "checkpoints" in p.parts or p.name == "lock" for p in created)
    doc = copy.deepcopy(BASE)
    doc["tensors"][0]["name"] = name
    if not safe_as_label:
        with pytest.raises(IntegrityError):
            verify_bundle(sign_predicate(doc, [_SIGNER]), _TRUST, expected_model=MODEL_ID)


def _is_plain_label(name: str) -> bool:
    try:
        validate_tensor_name(name)
    except ManifestError:
        return False
    return True


def test_only_names_without_path_syntax_pass_as_labels() -> None:
    """Of the traversal corpus only harmless labels (no '/', '..', NUL, backslash, control) pass."""
    passed = [n for n in TRAVERSAL_NAMES if _is_plain_label(n)]
    for name in passed:
        parts = name.split("/")
        assert ".." not in parts and "." not in parts and "" not in parts and "\\" not in name
    assert "../x" not in passed and "/etc/passwd" not in passed and "a\x00b" not in passed


def test_digests_never_become_paths() -> None:
    """Frame names come only from validated digests: anything else is refused before any path is built."""
    for bad in ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "a" * 63 + "/", ""]:
        counts.add("hostile.cases")
        with pytest.raises(ManifestError):
            Digest.parse(bad)


@pytest.mark.parametrize("name", TRAVERSAL_NAMES, ids=range(len(TRAVERSAL_NAMES)))
def test_path_like_asset_paths_in_a_signed_manifest_are_refused(name: str, tmp_path: Path) -> None:
    """A trusted signer's v2 manifest naming an asset outside the directory never verifies; restore writes nothing."""
    counts.add("hostile.cases")
    doc = copy.deepcopy(BASE)
    doc["version"] = 2
    data = b"x" * 16
    ref = {"digest": Digest.of(data).hex, "size": 16, "raw_digest": Digest.of(data).hex, "raw_size": 16, "codec": "id"}
    doc["assets"] = [{"path": name, "size": 16, "sha256": Digest.of(data).hex, "frames": [ref]}]
    doc["totals"]["stored_bytes"] += 16
    if _is_plain_label(name):  # e.g. "....//"-free spellings that are just odd file names
        assert verify_bundle(sign_predicate(doc, [_SIGNER]), _TRUST, expected_model=MODEL_ID).manifest.assets
    else:
        with pytest.raises(ManifestError):
            verify_bundle(sign_predicate(doc, [_SIGNER]), _TRUST, expected_model=MODEL_ID)
    doc["assets"][0]["path"] = "ok/config.json"  # the same record with a plain path verifies
    assert verify_bundle(sign_predicate(doc, [_SIGNER]), _TRUST, expected_model=MODEL_ID).manifest.assets
