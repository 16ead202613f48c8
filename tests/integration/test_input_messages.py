"""Input refusals that name the real problem and its fix (new-user trials of 2026-12-05, docs/trials/).

Each of these was refused with the right kind of error but a message or remedy about something
else: an empty ``__metadata__`` key got a remedy about caps, a non-NFC tensor name did not name
its file, a 5,000-digit integer named a Python setting, a bad ``--meta`` on a resized model was
reported as a layout change (74), and ``training.save(extra=...)`` spoke of ``metadata``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from appliance import api, training
from appliance.cli.main import main
from appliance.errors import UsageError
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store

pytestmark = pytest.mark.integration
HUGE = "1" + "0" * 4999  # 5,000 digits: above the 4,300 any reader converts
HUGE_INT = 10**4999  # the same number (HUGE_INT is refused by Python itself)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    key, root = tmp_path / "k", tmp_path / "store"
    assert main(["keygen", str(key), "--json"]) == 0
    assert main(["init", str(root), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096", "--json"]) == 0
    capsys.readouterr()
    return {"key": str(key), "root": str(root)}


def _said(out: dict[str, Any]) -> str:
    return f"{out['problem']} (remedy: {out['remedy']})"


def test_an_empty_header_metadata_key_is_refused_naming_the_file_and_the_empty_key_not_the_caps(
    cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "empty-key.safetensors"
    save_file({"w": torch.ones(4)}, str(path), metadata={"": "e", "format": "pt"})  # valid for safetensors
    code, out = run(capsys, "commit", cli["root"], str(path), "--key", cli["key"])
    assert code == 12 and out["error"] == "SourceFormatError", out
    assert str(path) in out["problem"] and "empty key" in out["problem"], out
    assert "no empty key" in out["remedy"] and "cap" not in _said(out), out
    assert run(capsys, "log", cli["root"])[1]["checkpoints"] == []


@pytest.mark.parametrize(("name", "says"), [("e\u0301", "NFC"), ("a\x07b", "control"), ("a/../b", "path")])
def test_a_bad_tensor_name_in_a_shard_is_refused_naming_the_file_that_holds_it(
    cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, says: str
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    save_file({"ok": torch.ones(2)}, str(model / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({name: torch.ones(2)}, str(model / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {"ok": "model-00001-of-00002.safetensors", name: "model-00002-of-00002.safetensors"}}  # fmt: skip
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    code, out = run(capsys, "commit", cli["root"], str(model), "--key", cli["key"])
    assert code == 12 and out["error"] == "SourceFormatError", out
    assert "model-00002-of-00002.safetensors" in out["problem"] and says in out["problem"], out
    assert "rename the tensor in model-00002-of-00002.safetensors" in out["remedy"], out
    assert "argument" not in _said(out)


@pytest.mark.parametrize("name", ["cafe\u0301", "a\u200bb", "x\u202ey"])  # decomposed, zero-width, bidi
def test_a_non_nfc_or_invisible_name_is_shown_escaped_in_its_message_tensor_and_file_alike(
    cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    """Trial 3: a non-NFC name was quoted as it is, indistinguishable from the NFC name it imitates."""
    shard = tmp_path / "shard"
    shard.mkdir()
    save_file({name: torch.ones(2)}, str(shard / "model.safetensors"), metadata={"format": "pt"})
    asset = tmp_path / "asset"
    asset.mkdir()
    save_file({"ok": torch.ones(2)}, str(asset / "model.safetensors"), metadata={"format": "pt"})
    (asset / f"{name}.json").write_text("{}")
    for model, code in ((shard, 12), (asset, 26)):
        got, out = run(capsys, "commit", cli["root"], str(model), "--key", cli["key"])
        assert got == code, out
        assert ascii(name)[1:-1] in out["problem"] and name not in out["problem"], out


def test_a_5000_digit_integer_in_meta_is_refused_in_appliances_terms_not_pythons(
    cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(4)}, str(path))
    code, out = run(capsys, "commit", cli["root"], str(path), "--key", cli["key"], "--meta", f'{{"n": {HUGE}}}')
    assert code == 10 and out["error"] == "UsageError", out
    assert "5000 decimal digits" in out["problem"] and "at most 4300" in out["problem"], out
    assert "JSON string" in out["remedy"] and "set_int_max_str_digits" not in _said(out), out


def test_a_5000_digit_integer_in_api_metadata_is_refused_in_appliances_terms_not_pythons(tmp_path: Path) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=4096))
    with pytest.raises(UsageError) as caught:
        api.save(store, {"w": torch.ones(4)}, key, {"a": {"n": HUGE_INT}})
    said = f"{caught.value.problem} {caught.value.remedy}"
    assert "metadata.a.n is an integer of more than 4300 decimal digits" in caught.value.problem, said
    assert "JSON string" in caught.value.remedy and "set_int_max_str_digits" not in said
    assert store.log() == []


API_META: dict[str, dict[str, Any]] = {
    '{"x": NaN}': {"x": float("nan")},
    f'{{"n": {HUGE}}}': {"n": HUGE_INT},
    '{"canary": 5}': {"canary": 5},
}


@pytest.mark.parametrize("meta", sorted(API_META))
def test_a_bad_meta_is_reported_before_the_layout_change_of_a_resized_model(
    cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, meta: str
) -> None:
    """Input errors (10) come before store-state errors: the trial's bad --meta was reported as exit 74."""
    first, resized = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.ones(4)}, str(first))
    save_file({"w": torch.ones(8)}, str(resized))
    assert run(capsys, "commit", cli["root"], str(first), "--key", cli["key"])[0] == 0
    assert run(capsys, "commit", cli["root"], str(resized), "--key", cli["key"])[0] == 74  # the layout rule holds
    code, out = run(capsys, "commit", cli["root"], str(resized), "--key", cli["key"], "--meta", meta)
    assert code == 10 and out["error"] == "UsageError", out
    key = SigningKey.load(cli["key"])
    with pytest.raises(UsageError):  # the API's save_directory checks its metadata first too
        api.save_directory(Store.open(cli["root"]), resized, key, API_META[meta])


@pytest.mark.parametrize("argument", ["extra", "position"])
def test_training_save_refusals_name_the_api_argument_not_metadata(tmp_path: Path, argument: str) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=4096))
    model = torch.nn.Linear(2, 2)
    deep: list[Any] = []
    for _ in range(60):
        deep = [deep]
    with pytest.raises(UsageError) as caught:
        training.save(store, key, model, **{argument: deep})
    problem, remedy = caught.value.problem, caught.value.remedy
    assert problem.startswith(f"argument `{argument}`[0][0]") and "nested deeper" in problem, problem
    assert f"pass `{argument}`" in remedy and "at most 59 levels" in remedy and "`metadata`" not in remedy, remedy
    assert "--meta" not in f"{problem} {remedy}"
    deep = []
    for _ in range(58):  # 59 levels with `argument` itself: what the remedy promises fits
        deep = [deep]
    training.save(store, key, model, **{argument: deep})
    with pytest.raises(UsageError) as caught:
        training.save(store, key, model, **{argument: {"n": HUGE_INT}})
    assert caught.value.problem.startswith(f"argument `{argument}`.n is an integer of more than 4300"), caught.value
    assert "JSON string" in caught.value.remedy and "`metadata`" not in caught.value.remedy


@pytest.mark.parametrize(("value", "says"), [(object(), "holds an object"), (Ellipsis, "holds an ellipsis")])
def test_a_value_training_state_cannot_store_is_named_with_the_right_article(value: object, says: str) -> None:
    """Trial 3: "training state at 'x' holds a object"."""
    with pytest.raises(UsageError, match=says):
        training.flatten({"x": value})
