"""Issue 12 kinds re-tried by a new user: two siblings the first pass missed, now closed.

- Kind 4 (no recursion on untrusted nesting): `--meta` nested ~1,000+ levels hit the JSON
  parser's recursion limit and printed a RecursionError traceback (exit 1) instead of an input
  error; the API already refused it with UsageError.
- Kind 9 (the recovery message must guide): when every candidate failed *while restoring* (a
  frame failing its SHA-256), the final error said "both slots are empty", hiding the damage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from appliance import api
from appliance.cli.main import main
from appliance.errors import NoValidCheckpointError, UsageError
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store

pytestmark = pytest.mark.integration


def _nested(depth: int) -> str:
    return '{"k":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [1_000, 3_000, 20_000])
def test_kind4_meta_nested_past_the_parsers_limit_is_an_input_error_not_a_traceback(
    tmp_path: Path, depth: int, capsys: pytest.CaptureFixture[str]
) -> None:
    key = SigningKey.generate()
    (tmp_path / "k.pem").write_bytes(key.private_pem())
    (tmp_path / "k.pem").chmod(0o600)
    Store.init(tmp_path / "s", [key.public], StoreConfig(model="m"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, str(tmp_path / "m.safetensors"))
    (tmp_path / "meta.json").write_text(_nested(depth))
    args = ["commit", str(tmp_path / "s"), str(tmp_path / "m.safetensors"), "--key", str(tmp_path / "k.pem")]
    assert main([*args, "--meta", f"@{tmp_path / 'meta.json'}"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err
    assert main([*args, "--json", "--meta", _nested(depth)]) == UsageError.exit_code
    printed = capsys.readouterr()
    doc = json.loads(printed.out)  # --json: the error document on stdout
    assert doc["exit_code"] == UsageError.exit_code and "nested too deeply" in doc["problem"]
    assert Store.open(tmp_path / "s").log() == []  # nothing committed


def test_kind9_a_damaged_frame_is_named_when_nothing_restores_never_both_slots_empty(tmp_path: Path) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m"))
    api.save(store, {"w": torch.arange(1024, dtype=torch.float32)}, key)
    frame = next((tmp_path / "s" / "A" / "frames").iterdir())
    data = bytearray(frame.read_bytes())
    data[0] ^= 0xFF
    frame.write_bytes(bytes(data))
    with pytest.raises(NoValidCheckpointError) as caught:
        api.load(store)
    message = str(caught.value)
    assert "both slots are empty" not in message
    assert "SHA-256" in message  # the frame that failed is named
    assert "appliance verify" in caught.value.remedy


def test_kind3_restoring_an_empty_checkpoint_warns_and_names_the_way_to_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """New-user trial: a plain restore of an explicitly empty newest checkpoint wrote nothing, silently."""
    from safetensors.torch import save_file

    key = SigningKey.generate()
    (tmp_path / "k.pem").write_bytes(key.private_pem())
    (tmp_path / "k.pem").chmod(0o600)
    Store.init(tmp_path / "s", [key.public], StoreConfig(model="m"))
    save_file({"w": torch.ones(4)}, str(tmp_path / "w.safetensors"))
    save_file({}, str(tmp_path / "e.safetensors"))
    for source, extra in (("w", []), ("e", ["--allow-empty"])):
        assert main(["commit", str(tmp_path / "s"), str(tmp_path / f"{source}.safetensors"), "--key", str(tmp_path / "k.pem"), *extra]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["restore", str(tmp_path / "s"), "--out", str(tmp_path / "r.safetensors")]) == 0
    said = capsys.readouterr().out
    assert "warning: generation 2 holds no tensors" in said and "--generation G" in said, said
    assert main(["restore", str(tmp_path / "s"), "--out", str(tmp_path / "r1.safetensors"), "--generation", "1", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["warnings"] == []
