"""Formats v1 and v2 are frozen: every golden store ever written must keep restoring bit-exactly.

If one of these fails, a change broke the ability to read checkpoints already on devices.
Golden sets are never regenerated; a new writer revision adds a set (tests/golden/make_golden.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import zstandard

from appliance import api
from appliance.format.canonical import canonical_bytes
from appliance.format.commit import CommitRecord
from appliance.format.statement import parse_bundle, parse_statement
from appliance.store.store import Store
from tests.golden.make_golden import CURRENT, GOLDEN_ROOT, SETS, build, tensor_digest

pytestmark = pytest.mark.integration


def _expected(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((GOLDEN_ROOT / name / "expected.json").read_text())


CASES = [(name, gen) for name in SETS for gen in sorted(_expected(name)["generations"])]


def _golden_store(tmp_path: Path, name: str) -> Store:
    shutil.copytree(GOLDEN_ROOT / name / "store", tmp_path / "store")
    return Store.open(tmp_path / "store")


@pytest.mark.parametrize(("name", "generation"), CASES)
def test_golden_generation_restores_bit_exactly(tmp_path: Path, name: str, generation: str) -> None:
    want = _expected(name)["generations"][generation]
    loaded = api.load(_golden_store(tmp_path, name), generation=int(generation), deep=True)
    assert loaded.slot == want["slot"]
    assert loaded.manifest_digest == want["manifest_digest"]
    got = {n: [str(t.dtype).removeprefix("torch."), list(t.shape), tensor_digest(t)] for n, t in loaded.tensors.items()}
    assert got == want["tensors"]
    assets = api.load(_golden_store(tmp_path / "again", name), generation=int(generation), assets=True).assets
    assert {p: hashlib.sha256(d).hexdigest() for p, d in assets.items()} == want.get("assets", {})


@pytest.mark.parametrize("name", SETS)
def test_golden_store_verifies_and_contains_a_delta(tmp_path: Path, name: str) -> None:
    store = _golden_store(tmp_path, name)
    assert store.verify(deep=True).all_ok
    manifest = store.select(2).opened.verified.manifest
    assert any(f.codec.xor for t in manifest.tensors for f in t.frames)
    assert manifest.bases


@pytest.mark.parametrize("name", SETS)
def test_golden_bytes_reparse_to_identical_canonical_forms(name: str) -> None:
    root = GOLDEN_ROOT / name / "store"
    for path in sorted(root.glob("*/checkpoints/*.manifest.json")):
        data = path.read_bytes()
        assert canonical_bytes(json.loads(data)) == data  # the bundle itself is canonical JSON
        bundle = parse_bundle(data)
        manifest = parse_statement(bundle.payload)
        assert json.loads(bundle.payload)["predicate"] == manifest.to_dict()
    for path in sorted(root.glob("*/checkpoints/*.commit.json")):
        assert CommitRecord.from_bytes(path.read_bytes()).to_bytes() == path.read_bytes()


def test_writer_reproduces_the_current_golden_manifests(tmp_path: Path) -> None:
    """Same inputs, same bytes: catches unintended format drift in the writer."""
    expected = _expected(CURRENT)
    if zstandard.__version__ != expected["zstandard"]:
        pytest.skip(f"goldens were written with zstandard {expected['zstandard']}, this is {zstandard.__version__}")
    fresh = build(tmp_path / "store")
    assert fresh["generations"] == expected["generations"]
    root = GOLDEN_ROOT / CURRENT / "store"
    for path in sorted(root.glob("*/checkpoints/*.manifest.json")):
        assert (tmp_path / "store" / path.relative_to(root)).read_bytes() == path.read_bytes()
