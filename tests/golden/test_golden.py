"""Format v1 is frozen: the golden store written by v1 must keep restoring bit-exactly.

If one of these fails, a change broke the ability to read checkpoints already on devices.
Regenerating the goldens (tests/golden/make_golden.py) is a format change: bump the version.
"""

from __future__ import annotations

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
from tests.golden.make_golden import build, tensor_digest

pytestmark = pytest.mark.integration
GOLDEN = Path(__file__).parent / "v1"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture
def golden_store(tmp_path: Path) -> Store:
    shutil.copytree(GOLDEN / "store", tmp_path / "store")
    return Store.open(tmp_path / "store")


@pytest.mark.parametrize("generation", sorted(EXPECTED["generations"]))
def test_golden_generation_restores_bit_exactly(golden_store: Store, generation: str) -> None:
    want = EXPECTED["generations"][generation]
    loaded = api.load(golden_store, generation=int(generation), deep=True)
    assert loaded.slot == want["slot"]
    assert loaded.manifest_digest == want["manifest_digest"]
    got = {n: [str(t.dtype).removeprefix("torch."), list(t.shape), tensor_digest(t)] for n, t in loaded.tensors.items()}
    assert got == want["tensors"]


def test_golden_store_verifies_and_contains_a_delta(golden_store: Store) -> None:
    assert golden_store.verify(deep=True).all_ok
    manifest = golden_store.select(2).opened.verified.manifest
    assert any(f.codec.xor for t in manifest.tensors for f in t.frames)
    assert manifest.bases


def test_golden_bytes_reparse_to_identical_canonical_forms() -> None:
    for path in sorted((GOLDEN / "store").glob("*/checkpoints/*.manifest.json")):
        data = path.read_bytes()
        assert canonical_bytes(json.loads(data)) == data  # the bundle itself is canonical JSON
        bundle = parse_bundle(data)
        manifest = parse_statement(bundle.payload)
        assert json.loads(bundle.payload)["predicate"] == manifest.to_dict()
    for path in sorted((GOLDEN / "store").glob("*/checkpoints/*.commit.json")):
        assert CommitRecord.from_bytes(path.read_bytes()).to_bytes() == path.read_bytes()


def test_writer_reproduces_the_golden_manifests(tmp_path: Path) -> None:
    """Same inputs, same bytes: catches unintended format drift in the writer."""
    if zstandard.__version__ != EXPECTED["zstandard"]:
        pytest.skip(f"goldens were written with zstandard {EXPECTED['zstandard']}, this is {zstandard.__version__}")
    fresh = build(tmp_path / "store")
    assert fresh["generations"] == EXPECTED["generations"]
    for path in sorted((GOLDEN / "store").glob("*/checkpoints/*.manifest.json")):
        assert (tmp_path / "store" / path.relative_to(GOLDEN / "store")).read_bytes() == path.read_bytes()
