"""Import from safetensors files and sharded model directories; export; nothing is unpickled."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from appliance import api
from appliance.errors import SourceFormatError, UsageError
from appliance.signing import SigningKey
from appliance.sources.safetensors_io import export_safetensors, open_model
from appliance.store.store import Store
from tests.integration.conftest import same, weights

pytestmark = pytest.mark.integration


def _commit(store: Store, key: SigningKey, source: Path) -> None:
    model = open_model(source)
    try:
        store.commit(model.sources, [key], {"source": source.name})
    finally:
        model.close()


def test_single_file_import_round_trips(store: Store, key: SigningKey, tmp_path: Path) -> None:
    state = weights()
    save_file(state, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    model = open_model(tmp_path / "m.safetensors")
    assert model.metadata == {"format": "pt"}
    assert model.raw_bytes == sum(t.numel() * t.element_size() for t in state.values())
    _commit(store, key, tmp_path / "m.safetensors")
    assert same(api.load(store).tensors, state)


def test_sharded_hugging_face_directory_imports_every_shard(store: Store, key: SigningKey, tmp_path: Path) -> None:
    state = weights()
    d = tmp_path / "model"
    d.mkdir()
    shards = {"model-00001-of-00002.safetensors": ["w"], "model-00002-of-00002.safetensors": ["v", "step"]}
    weight_map = {}
    for shard, names in shards.items():
        save_file({n: state[n] for n in names}, str(d / shard))
        weight_map.update(dict.fromkeys(names, shard))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "stray.bin").write_bytes(b"\x80\x04not read")  # a pickle-looking file: never opened
    _commit(store, key, d)
    assert same(api.load(store).tensors, state)


def test_directory_without_index_takes_all_safetensors_files(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    save_file({"b": torch.ones(3)}, str(tmp_path / "b.safetensors"))
    assert [s.name for s in open_model(tmp_path).sources] == ["a", "b"]


def _header_file(path: Path, header: bytes, payload: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)
    return path


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x80\x04\x95 pickle protocol 4",
        struct.pack("<Q", 2**63) + b"{}",
        struct.pack("<Q", 100) + b"{}",
        struct.pack("<Q", 10) + b"not json!!",
    ],
)
def test_malformed_safetensors_are_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.safetensors").write_bytes(content)
    with pytest.raises(SourceFormatError):
        open_model(tmp_path / "bad.safetensors")


def test_tensor_offsets_past_the_end_are_refused(tmp_path: Path) -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}).encode()
    _header_file(tmp_path / "short.safetensors", header, b"\x00" * 16)
    with pytest.raises(SourceFormatError):
        model = open_model(tmp_path / "short.safetensors")
        model.sources[0].load()


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/dir.safetensors", "x.bin"])
def test_index_naming_unsafe_shards_is_refused(tmp_path: Path, shard: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(SourceFormatError, match="unsafe shard"):
        open_model(tmp_path)


def test_missing_shard_and_missing_source_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "a.safetensors"}}))
    with pytest.raises(SourceFormatError, match="missing"):
        open_model(tmp_path)
    with pytest.raises(SourceFormatError, match="does not exist"):
        open_model(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceFormatError, match="no .safetensors"):
        open_model(empty)


def test_duplicate_tensor_across_shards_is_refused(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(SourceFormatError, match="appears in two shards"):
        open_model(tmp_path)


def test_export_is_atomic_and_readable(tmp_path: Path) -> None:
    state = weights()
    out = export_safetensors(state, tmp_path / "out.safetensors", {"k": "v"})
    assert same(load_file(str(out)), state)
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_export_of_a_dtype_safetensors_lacks_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="safetensors has no code for dtype complex32"):
        export_safetensors({"c": torch.zeros(2, dtype=torch.complex32)}, tmp_path / "o.safetensors", {})
