"""A subset restore (``--tensors``) writes a self-consistent model directory.

The new-user trial found ``--tensors 'model.layers.0.*'`` writing shards still named
``-of-00003`` (only two written) and an index with the subset's ``total_size`` but the whole
model's ``total_parameters``. Every restored directory now passes the same import rules a
commit applies (its index names exactly its shards, numbered 1..m of m), its totals are the
written tensors', and it commits back. The property test walks subsets of a sharded model;
the trial's input stays as a regression test. (Loading with transformers: tests/hf.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from appliance import api
from appliance.format.directory import INDEX_NAME, left_out_shards
from appliance.signing import SigningKey
from appliance.sources.safetensors_io import open_model
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.integration.conftest import same
from tests.integration.test_model_dirs import run

pytestmark = pytest.mark.integration

LAYOUT = {  # a transformers-style 3-shard save: embeddings, layer 0, layer 1 + head
    "model-00001-of-00003.safetensors": ["model.embed_tokens.weight"],
    "model-00002-of-00003.safetensors": ["model.layers.0.mlp.weight", "model.layers.0.norm.weight"],
    "model-00003-of-00003.safetensors": ["model.layers.1.mlp.weight", "model.norm.weight", "lm_head.weight"],
}
NAMES = [n for names in LAYOUT.values() for n in names]
TOTAL_PARAMETERS = 999_999  # what the source index claims (transformers: model.num_parameters())


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shapes = {"embed": (40, 8), "mlp": (8, 8), "norm": (8,), "head": (40, 8)}
    out = {}
    for name in NAMES:
        kind = next(k for k in shapes if k in name or (k == "head" and name.startswith("lm_head")))
        out[name] = torch.randn(*shapes[kind], generator=g).to(torch.bfloat16 if "mlp" in name else torch.float32)
    return out


def source(path: Path) -> Path:
    path.mkdir()
    t = tensors()
    for file, names in LAYOUT.items():
        save_file({n: t[n] for n in names}, str(path / file), metadata={"format": "pt"})
    size = sum(v.numel() * v.element_size() for v in t.values())
    index = {"metadata": {"total_parameters": TOTAL_PARAMETERS, "total_size": size}, "weight_map": {
        n: file for file, names in LAYOUT.items() for n in names}}  # fmt: skip
    (path / INDEX_NAME).write_text(json.dumps(index))
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, SigningKey]:
    root = tmp_path_factory.mktemp("subset")
    key = SigningKey.generate()
    store = Store.init(root / "store", [key.public], StoreConfig(model="m", frame_size=4096))
    api.save_directory(store, source(root / "src"), key)
    return store, key


def check_self_consistent(out: Path, selected: set[str]) -> None:
    """The directory a loader (and appliance's own import) reads: index == files == tensors, totals true."""
    index = json.loads((out / INDEX_NAME).read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == files
    assert left_out_shards(index["weight_map"].values(), files) == ([], 0)  # numbered 1..m of m
    held: dict[str, torch.Tensor] = {}
    for file in files:
        part = load_file(str(out / file))
        assert {n for n, f in index["weight_map"].items() if f == file} == set(part)
        held |= part
    assert same(held, {n: t for n, t in tensors().items() if n in selected})
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in held.values())
    expected = TOTAL_PARAMETERS if selected == set(NAMES) else sum(t.numel() for t in held.values())
    assert index["metadata"]["total_parameters"] == expected
    model = open_model(out)  # the import rules a commit applies accept it
    model.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.sampled_from(NAMES), min_size=1))
@example({"model.layers.0.mlp.weight", "model.layers.0.norm.weight"})  # the trial's 'model.layers.0.*'
@example({"model.embed_tokens.weight", "lm_head.weight"})  # first and last shard: a gap in the middle
@example(set(NAMES))  # everything: the recorded layout and index metadata unchanged
def test_every_subset_restores_as_a_self_consistent_directory(committed: tuple[Store, SigningKey], tmp_path_factory: pytest.TempPathFactory, selected: set[str]) -> None:  # fmt: skip
    store, _ = committed
    out = tmp_path_factory.mktemp("out") / "d"
    api.restore_directory(store, out, names=selected)
    check_self_consistent(out, selected)
    if selected == set(NAMES):
        assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(LAYOUT)


def test_the_trial_subset_is_renumbered_and_recounted_and_commits_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    key, root = tmp_path / "k", tmp_path / "store"
    assert run(capsys, "keygen", str(key))[0] == 0
    assert run(capsys, "init", str(root), "--trust", f"{key}.pub")[0] == 0
    assert run(capsys, "commit", str(root), str(source(tmp_path / "src")), "--key", str(key))[0] == 0
    out = tmp_path / "layer0"
    code, result = run(capsys, "restore", str(root), "--out", f"{out}/", "--tensors", "model.layers.0.*")
    assert code == 0 and result["written"]["shards"] == ["model-00001-of-00001.safetensors"]
    check_self_consistent(out, {"model.layers.0.mlp.weight", "model.layers.0.norm.weight"})
    assert json.loads((out / INDEX_NAME).read_text())["metadata"]["total_parameters"] == 8 * 8 + 8
    code, result = run(capsys, "commit", str(root), str(out), "--key", str(key))
    assert code == 74 and "2 tensors vs the parent's 6" in result["problem"]  # a subset is not the store's model
    code, result = run(capsys, "commit", str(root), str(out), "--key", str(key), "--new-layout")
    assert code == 0 and result["shards"] == 1 and result["assets"] == 1
