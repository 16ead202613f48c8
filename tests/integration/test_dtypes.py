"""One dtype table on every path: CLI import, Python API, safetensors export.

Every dtype that safetensors and torch both know round-trips bit for bit (NaN payloads and
all) through the CLI and the API; a dtype one side lacks gets an error naming it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from appliance import api
from appliance.cli.main import main
from appliance.format.dtypes import DTYPES, from_safetensors
from appliance.signing import SigningKey
from appliance.store.store import Store
from tests.integration.conftest import same

pytestmark = pytest.mark.integration

BOTH = [d.name for d in DTYPES.values() if d.safetensors]
TORCH_ONLY = [d.name for d in DTYPES.values() if not d.safetensors]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def sample(name: str, shape: tuple[int, ...] = (3, 6)) -> torch.Tensor:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        pytest.skip(f"torch {torch.__version__} has no {name}")
    g = torch.Generator().manual_seed(len(name))
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * itemsize), generator=g, dtype=torch.uint8)
    return raw.view(dtype)  # every bit pattern, NaN payloads included


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    key, root = tmp_path / "k", tmp_path / "store"
    assert run(capsys, "keygen", str(key))[0] == 0
    assert run(capsys, "init", str(root), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096")[0] == 0
    return {"key": str(key), "root": str(root)}


@pytest.mark.parametrize("name", list(DTYPES))
def test_every_dtype_round_trips_through_the_api(store: Store, key: SigningKey, name: str) -> None:
    tensors = {"x": sample(name), "scalar": sample(name, (1,)).reshape(())}
    api.save(store, tensors, key)
    assert same(api.load(store).tensors, tensors)


@pytest.mark.parametrize("name", BOTH)
def test_every_shared_dtype_round_trips_through_the_cli(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:  # fmt: skip
    """safetensors.torch writes the file; commit; restore; the same codes, shapes and bytes come back."""
    tensors = {"x": sample(name)}
    save_file(tensors, str(tmp_path / "in.safetensors"), metadata={"format": "pt"})
    code, out = run(capsys, "commit", cli["root"], str(tmp_path / "in.safetensors"), "--key", cli["key"])
    assert code == 0, out
    code, out = run(capsys, "restore", cli["root"], "--out", str(tmp_path / "out.safetensors"))
    assert code == 0, out
    with (
        safe_open(str(tmp_path / "in.safetensors"), "pt") as a,
        safe_open(str(tmp_path / "out.safetensors"), "pt") as b,
    ):
        assert b.get_slice("x").get_dtype() == a.get_slice("x").get_dtype() == DTYPES[name].safetensors
        assert b.get_slice("x").get_shape() == a.get_slice("x").get_shape()
        assert same({"x": b.get_tensor("x")}, tensors)


@pytest.mark.parametrize("name", BOTH)
def test_api_saved_dtypes_export_through_the_cli(store: Store, key: SigningKey, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:  # fmt: skip
    tensors = {"x": sample(name)}
    api.save(store, tensors, key)
    code, out = run(capsys, "restore", str(store.storage.root), "--out", str(tmp_path / "o.safetensors"))  # type: ignore[attr-defined]
    assert code == 0, out
    with safe_open(str(tmp_path / "o.safetensors"), "pt") as f:
        assert same({"x": f.get_tensor("x")}, tensors)


@pytest.mark.parametrize("name", TORCH_ONLY)
def test_a_dtype_safetensors_lacks_is_named_on_export(store: Store, key: SigningKey, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:  # fmt: skip
    api.save(store, {"x": sample(name)}, key)
    code, out = run(capsys, "restore", str(store.storage.root), "--out", str(tmp_path / "o.safetensors"))  # type: ignore[attr-defined]
    assert code == 10 and f"safetensors has no code for dtype {name}" in out["problem"]
    assert not (tmp_path / "o.safetensors").exists()


def _raw_file(path: Path, code: str, shape: list[int], nbytes: int) -> None:
    header = json.dumps({"x": {"dtype": code, "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x11" * nbytes)


@pytest.mark.parametrize("code", ["F6_E2M3", "F6_E3M2"])
def test_a_dtype_torch_lacks_is_named_on_import(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, code: str) -> None:  # fmt: skip
    _raw_file(tmp_path / "f6.safetensors", code, [4], 3)
    rc, out = run(capsys, "commit", cli["root"], str(tmp_path / "f6.safetensors"), "--key", cli["key"])
    assert rc == 12 and code in out["problem"] and "no torch type" in out["problem"]


def test_packed_f4_shapes_are_translated_both_ways() -> None:
    assert from_safetensors("F4", (3, 8))[1] == (3, 4)
    with pytest.raises(ValueError, match="divisible by 2"):
        from_safetensors("F4", (3, 7))
    with pytest.raises(ValueError, match="unknown"):
        from_safetensors("F2", (1,))
