"""Model directories kept whole: assets, per-shard header metadata, index validation, reserved names.

Through the CLI (what an operator runs) and the Python API. Loading with transformers is in
tests/hf/ (its own environments); here the directory itself is compared file by file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from appliance import api
from appliance.cli.main import main
from appliance.errors import ReservedNameError, SourceFormatError
from appliance.format.directory import INDEX_NAME
from appliance.signing import SigningKey
from appliance.sources.tensors import source_from_tensor
from appliance.store.store import Store
from tests.integration.conftest import same

pytestmark = pytest.mark.integration

SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 32, generator=g).to(torch.bfloat16),
        "layer.0.weight": torch.randn(32, 32, generator=g),
        "layer.0.bias": torch.randn(32, generator=g),
        "lm_head.weight": torch.randn(64, 32, generator=g).to(torch.float16),
    }


ASSETS = {
    "config.json": b'{"model_type": "tiny", "hidden_size": 32}\n',
    "generation_config.json": b'{"do_sample": false}\n',
    "tokenizer.json": json.dumps({"vocab": {f"t{i}": i for i in range(2000)}}).encode(),
    "tokenizer_config.json": b"{}\n",
    "README.md": b"---\nlicense: apache-2.0\n---\n# Tiny\n",
    "preprocessor/preprocessor_config.json": b'{"size": 224}\n',
    "scripts/convert.sh": b"#!/bin/sh\necho hi\n",
    "empty.txt": b"",
}


def model_dir(path: Path, tensors: dict[str, torch.Tensor], assets: dict[str, bytes] = ASSETS) -> Path:
    """A Hugging Face style directory: two shards with different headers, an index, assets."""
    path.mkdir(parents=True)
    names = list(tensors)
    layout = {SHARD1: names[:2], SHARD2: names[2:]}
    save_file({n: tensors[n] for n in layout[SHARD1]}, str(path / SHARD1), metadata={"format": "pt"})
    save_file({n: tensors[n] for n in layout[SHARD2]}, str(path / SHARD2), metadata={"format": "pt", "x": "2"})
    weight_map = {n: shard for shard, ns in layout.items() for n in ns}
    index = {"metadata": {"total_size": 1, "total_parameters": 7}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index))
    for rel, data in assets.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    (path / "scripts/convert.sh").chmod(0o755)
    os.symlink("tokenizer.json", path / "tokenizer_alias.json")  # a link inside: stored as its target's bytes
    return path


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    key, root = tmp_path / "k", tmp_path / "store"
    assert run(capsys, "keygen", str(key))[0] == 0
    assert run(capsys, "init", str(root), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096")[0] == 0
    return {"key": str(key), "root": str(root)}


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def test_directory_round_trips_whole_through_the_cli(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])
    assert code == 0 and out["assets"] == len(ASSETS) + 1 and out["shards"] == 2
    code, out = run(capsys, "restore", cli["root"], "--out", f"{tmp_path / 'out'}/")
    assert code == 0 and out["directory"]
    dst = tmp_path / "out"
    for rel, data in ASSETS.items():
        assert (dst / rel).read_bytes() == data, rel
    assert (dst / "tokenizer_alias.json").read_bytes() == ASSETS["tokenizer.json"]
    assert not (dst / "tokenizer_alias.json").is_symlink()
    assert os.access(dst / "scripts/convert.sh", os.X_OK) and not os.access(dst / "config.json", os.X_OK)
    index = json.loads((dst / INDEX_NAME).read_text())
    assert index["weight_map"] == json.loads((src / INDEX_NAME).read_text())["weight_map"]
    assert index["metadata"]["total_parameters"] == 7  # the source index's metadata is kept
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state().values())
    for shard in (SHARD1, SHARD2):  # each shard's header exactly, plus appliance's own namespace
        got = header(dst / shard)
        assert {k: v for k, v in got.items() if not k.startswith("appliance.")} == header(src / shard)
        assert got["appliance.generation"] == "1"
        assert same(load_file(str(dst / shard)), load_file(str(src / shard)))
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir())


def test_unchanged_assets_are_reused_by_the_next_generation(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    model_dir(tmp_path / "v1", state())
    model_dir(tmp_path / "v2", state(), ASSETS | {"config.json": b'{"model_type": "tiny", "hidden_size": 33}\n'})
    assert run(capsys, "commit", cli["root"], str(tmp_path / "v1"), "--key", cli["key"])[0] == 0
    code, out = run(capsys, "commit", cli["root"], str(tmp_path / "v2"), "--key", cli["key"])
    frames = out["frame_kinds"]
    assert code == 0 and frames["full"] + frames["delta"] == 1  # only the changed config.json is new
    loaded = api.load(Store.open(cli["root"]), assets=True)
    assert (
        loaded.assets["config.json"].endswith(b"33}\n") and loaded.assets["tokenizer.json"] == ASSETS["tokenizer.json"]
    )


def test_restore_to_a_file_keeps_todays_behaviour_and_the_header(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    tensors = state()
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"format": "pt", "author": "me"})
    assert run(capsys, "commit", cli["root"], str(tmp_path / "m.safetensors"), "--key", cli["key"])[0] == 0
    code, _ = run(capsys, "restore", cli["root"], "--out", str(tmp_path / "r.safetensors"))
    assert code == 0 and (tmp_path / "r.safetensors").is_file()
    got = header(tmp_path / "r.safetensors")
    assert got["format"] == "pt" and got["author"] == "me" and got["appliance.generation"] == "1"
    assert same(load_file(str(tmp_path / "r.safetensors")), tensors)


def test_shards_that_disagree_cannot_become_one_file(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    (src / SHARD1).unlink()
    save_file({n: state()[n] for n in list(state())[:2]}, str(src / SHARD1), metadata={"format": "pt", "x": "1"})
    assert run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])[0] == 0
    code, out = run(capsys, "restore", cli["root"], "--out", str(tmp_path / "one.safetensors"))
    assert code == 10 and "'x'" in out["problem"] and not (tmp_path / "one.safetensors").exists()
    assert "--out DIR/" in out["remedy"]
    # new-user trial: re-sharding a directory said "restore as a directory", which the user had done
    code, out = run(capsys, "restore", cli["root"], "--out", f"{tmp_path / 'dir'}/", "--max-shard-size", "1KB")
    assert code == 10 and "without --max-shard-size" in out["remedy"] and "--out DIR/" not in out["remedy"]
    assert run(capsys, "restore", cli["root"], "--out", f"{tmp_path / 'dir'}/")[0] == 0  # the recorded shards


def test_tensors_pattern_restores_a_subset(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    assert run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])[0] == 0
    code, _ = run(capsys, "restore", cli["root"], "--out", str(tmp_path / "s.safetensors"), "--tensors", "layer.*")
    assert code == 0
    assert same(
        load_file(str(tmp_path / "s.safetensors")), {k: v for k, v in state().items() if k.startswith("layer.")}
    )
    code, _ = run(capsys, "restore", cli["root"], "--out", f"{tmp_path / 'sd'}/", "--tensors", "lm_head.*")
    only = "model-00001-of-00001.safetensors"  # the one shard written is 1 of 1 (was -00002-of-00002)
    assert code == 0 and sorted(p.name for p in (tmp_path / "sd").glob("*.safetensors")) == [only]
    assert json.loads((tmp_path / "sd" / INDEX_NAME).read_text())["weight_map"] == {"lm_head.weight": only}
    code, out = run(capsys, "restore", cli["root"], "--out", str(tmp_path / "x.safetensors"), "--tensors", "nope*")
    assert code == 10 and "matches" in out["problem"] and out["problem"].startswith("--tensors")  # was 16


def test_max_shard_size_writes_new_shards_and_index(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    (src / SHARD2).unlink()
    save_file({n: state()[n] for n in list(state())[2:]}, str(src / SHARD2), metadata={"format": "pt"})
    assert run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])[0] == 0
    code, out = run(capsys, "restore", cli["root"], "--out", f"{tmp_path / 'o'}/", "--max-shard-size", "5KB")
    assert code == 0 and len(out["written"]["shards"]) == 3  # 4 KiB, 4 KiB + 128 B, 4 KiB
    index = json.loads((tmp_path / "o" / INDEX_NAME).read_text())
    restored = {}
    for shard in set(index["weight_map"].values()):
        restored |= load_file(str(tmp_path / "o" / shard))
        assert header(tmp_path / "o" / shard)["format"] == "pt"
    assert same(restored, state())


def test_out_with_a_trailing_slash_is_a_directory_and_a_full_one_is_refused(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    save_file(state(), str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    assert run(capsys, "commit", cli["root"], str(tmp_path / "m.safetensors"), "--key", cli["key"])[0] == 0
    assert run(capsys, "restore", cli["root"], "--out", f"{tmp_path / 'newdir'}/")[0] == 0
    assert (tmp_path / "newdir" / "m.safetensors").is_file()  # the recorded file name, no index for one file
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    code, out = run(capsys, "restore", cli["root"], "--out", str(tmp_path / "full"))
    assert code == 10 and "not an empty directory" in out["problem"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("where", ["outside", "dangling", "directory"])
def test_links_out_of_the_directory_are_refused_before_anything_is_written(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    (tmp_path / "secret").write_text("root:x:0:0")
    target = {"outside": tmp_path / "secret", "dangling": tmp_path / "nowhere", "directory": src / "scripts"}[where]
    os.symlink(target, src / "link")
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])
    assert code == 26 and out["error"] == "AssetError" and "link" in out["problem"]
    assert list((Path(cli["root"]) / "A" / "frames").iterdir()) == []


def _index_case(src: Path, case: str) -> str:
    index = json.loads((src / INDEX_NAME).read_text())
    if case == "names a tensor no shard holds":
        index["weight_map"]["ghost.weight"] = SHARD1
        needle = "ghost.weight"
    elif case == "shard holds an unnamed tensor":
        del index["weight_map"]["layer.0.bias"]
        needle = "layer.0.bias"
    elif case == "tensor in two shards":
        extra = load_file(str(src / SHARD2)) | {"embed.weight": state()["embed.weight"]}
        save_file(extra, str(src / SHARD2), metadata={"format": "pt"})
        needle = "embed.weight"
    elif case == "tensor in another shard":
        index["weight_map"]["embed.weight"] = SHARD2
        needle = "embed.weight"
    else:
        index["weight_map"] = {}
        needle = "empty weight_map"
    (src / INDEX_NAME).write_text(json.dumps(index))
    return needle


@pytest.mark.parametrize(
    "case",
    [
        "names a tensor no shard holds",
        "shard holds an unnamed tensor",
        "tensor in two shards",
        "tensor in another shard",
        "empty map",
    ],
)
def test_index_defects_are_typed_errors_naming_the_tensors_and_nothing_is_committed(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    needle = _index_case(src, case)
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])
    assert code == SourceFormatError.exit_code and out["error"] == "SourceFormatError"
    assert needle in out["problem"]
    assert run(capsys, "log", cli["root"])[1]["checkpoints"] == []
    assert list((Path(cli["root"]) / "A" / "frames").iterdir()) == []


def test_reserved_tensor_name_is_refused_by_the_api_before_anything_is_written(store: Store, key: SigningKey) -> None:
    with pytest.raises(ReservedNameError, match="__metadata__") as err:
        api.save(store, {"__metadata__": torch.ones(2), "w": torch.ones(2)}, key)
    assert err.value.exit_code == 25
    assert list((Path(str(store.storage.root)) / "A" / "frames").iterdir()) == []  # type: ignore[attr-defined]


def test_reserved_header_namespace_is_refused_by_the_api(store: Store, key: SigningKey) -> None:
    with pytest.raises(ReservedNameError, match=r"appliance\.generation"):
        api.save(store, {"w": torch.ones(2)}, key, header_metadata={"appliance.generation": "9"})


def test_api_header_metadata_is_written_back(store: Store, key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    api.save(store, {"w": torch.ones(2)}, key, header_metadata={"format": "pt", "k": "v"})
    root = str(store.storage.root)  # type: ignore[attr-defined]
    assert run(capsys, "restore", root, "--out", str(tmp_path / "r.safetensors"))[0] == 0
    assert {k: v for k, v in header(tmp_path / "r.safetensors").items() if "." not in k} == {"format": "pt", "k": "v"}


def test_a_reserved_name_already_in_a_store_restores_to_a_typed_error_not_a_broken_file(store: Store, key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A checkpoint written before names were checked (store API, no check): refused on export, exit 25."""
    store.commit([source_from_tensor("__metadata__", torch.ones(2))], [key])
    root = str(store.storage.root)  # type: ignore[attr-defined]
    code, out = run(capsys, "restore", root, "--out", str(tmp_path / "r.safetensors"))
    assert code == 25 and out["error"] == "ReservedNameError" and not (tmp_path / "r.safetensors").exists()
    assert torch.equal(api.load(store).tensors["__metadata__"], torch.ones(2))  # the API still restores it


def test_a_damaged_asset_frame_falls_back_to_the_other_slot(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    """Assets are checked like tensors: a rotten tokenizer frame costs a fallback, never a wrong file."""
    src = model_dir(tmp_path / "src", state())
    for _ in range(2):
        assert run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])[0] == 0
    store = Store.open(cli["root"])
    manifest = store.select(2).opened.verified.manifest
    frame = manifest.asset("tokenizer.json").frames[0]
    path = Path(cli["root"]) / "B" / "frames" / frame.digest.hex
    path.chmod(0o644)
    path.write_bytes(b"\x00" + path.read_bytes()[1:])
    code, out = run(capsys, "verify", cli["root"])
    assert code == 1 and not out["ok"]
    code, out = run(capsys, "restore", cli["root"], "--out", f"{tmp_path / 'dst'}/")
    assert code == 1 and out["fell_back"] and out["restore"]["generation"] == 1
    assert (tmp_path / "dst" / "tokenizer.json").read_bytes() == ASSETS["tokenizer.json"]
    entry = run(capsys, "log", cli["root"])[1]["checkpoints"][0]
    assert entry["assets"] == len(ASSETS) + 1 and entry["format_version"] == 2


def test_gc_keeps_asset_frames_that_a_kept_checkpoint_names(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    for i in range(5):  # store keep=... default; old generations are collected, shared asset frames stay
        src = model_dir(tmp_path / f"v{i}", state(i), ASSETS | {"config.json": f'{{"v": {i}}}'.encode()})
        assert run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])[0] == 0
    assert run(capsys, "gc", cli["root"])[0] == 0
    code, out = run(capsys, "verify", cli["root"], "--deep")
    assert code == 0 and out["ok"]
    loaded = api.load(Store.open(cli["root"]), assets=True)
    assert loaded.generation == 5 and loaded.assets["config.json"] == b'{"v": 4}'
    assert loaded.assets["tokenizer.json"] == ASSETS["tokenizer.json"]


def test_python_api_commits_and_restores_a_whole_directory(store: Store, key: SigningKey, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "src", state())
    result = api.save_directory(store, src, key, {"run": "a7"})
    loaded = api.restore_directory(store, tmp_path / "dst", names=lambda n: n != "lm_head.weight")
    assert loaded.generation == result.generation and "lm_head.weight" not in loaded.tensors
    assert sorted(p.name for p in (tmp_path / "dst").glob("*.safetensors")) == [SHARD1, SHARD2]
    assert (tmp_path / "dst" / "README.md").read_bytes() == ASSETS["README.md"]
    assert header(tmp_path / "dst" / SHARD2)["x"] == "2"
    assert json.loads(header(tmp_path / "dst" / SHARD1)["appliance.metadata"]) == {"run": "a7"}


def test_the_api_honours_a_store_that_requires_a_vendor_signature(
    store: Store, key: SigningKey, tmp_path: Path
) -> None:
    """api.save_directory applies the same vendor rule as `appliance commit` (no side door)."""
    from appliance.errors import VendorSignatureError
    from appliance.provenance import VendorTrust, save_vendors, vendors_path

    root = Path(str(store.storage.root))  # type: ignore[attr-defined]
    save_vendors(vendors_path(root, store.config.vendors), VendorTrust(require_signature=True))
    with pytest.raises(VendorSignatureError, match="requires a vendor signature"):
        api.save_directory(store, model_dir(tmp_path / "src", state()), key)
    assert list((root / "A" / "frames").iterdir()) == []


@pytest.mark.parametrize(("declared", "actual"), [(100, 60), (60, 100)])
def test_an_asset_that_changes_size_during_the_commit_is_an_error_and_nothing_is_committed(store: Store, key: SigningKey, declared: int, actual: int) -> None:  # fmt: skip
    """Assets are read, never mapped: a file truncated (or grown) meanwhile is a changed source (20), not a SIGBUS."""
    import io

    from appliance.errors import SourceChangedError
    from appliance.sources.tensors import sources_from_dict
    from appliance.store.assets import AssetSource, DirectoryParts

    parts = DirectoryParts((AssetSource("config.json", declared, lambda: io.BytesIO(b"x" * actual)),))
    with pytest.raises(SourceChangedError, match="while it was committed"):
        store.commit(sources_from_dict(state()), [key], directory=parts)
    root = Path(str(store.storage.root))  # type: ignore[attr-defined]
    assert list((root / "A" / "checkpoints").iterdir()) == [] and list((root / "A" / "frames").iterdir()) == []


def test_meta_with_a_key_given_twice_is_refused_not_last_wins(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    """New-user trial: `--meta '{"a":1,"a":2}'` was taken silently (index files refuse duplicate keys)."""
    src = model_dir(tmp_path / "src", state())
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"], "--meta", '{"a": 1, "a": 2}')
    assert code == 10 and "duplicate key 'a'" in out["problem"]


def test_meta_duplicate_key_remedy_names_the_key_and_says_to_give_each_key_once(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    """Trial 3: the remedy was the generic "pass a JSON object"."""
    src = model_dir(tmp_path / "src", state())
    meta = '{"run": {"lr": 1, "lr": 2}}'  # nested: the key is named wherever it is
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"], "--meta", meta)
    assert code == 10 and out["error"] == "UsageError" and "duplicate key 'lr'" in out["problem"], out
    assert "give each key once" in out["remedy"] and "'lr'" in out["remedy"], out
    assert "pass a JSON object" not in out["remedy"]


def test_refusals_of_names_and_index_fields_say_what_to_change(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    """New-user trial: an asset name refusal repeated the reader's "manifest is malformed" remedy; an index
    whose `metadata` was wrong said it "needs a weight_map object"."""
    src = model_dir(tmp_path / "src", state())
    (src / "a\\b.txt").write_text("x")
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])
    assert code == 26 and "rename the file" in out["remedy"] and "malformed" not in out["remedy"]
    (src / "a\\b.txt").unlink()
    index = json.loads((src / INDEX_NAME).read_text()) | {"metadata": 5}
    (src / INDEX_NAME).write_text(json.dumps(index))
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])
    assert code == 12 and "'metadata' must be a JSON object" in out["problem"]
