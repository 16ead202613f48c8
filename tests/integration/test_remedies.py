"""Each error's remedy names the real fix (issue 11's new-user trial, items 3 and 7-12).

The trial found remedies pointing elsewhere: a private key passed to `--trust` told to use a
private key; a public key passed to `--key` reported a file-mode problem; `--sign-model` with a
missing file told about Ed25519; `--frame-size 3` blamed store.json (exit 18); `--tensors`
matching nothing talked about destination tensors. Each is fixed for its whole kind: every
key-file role against every kind of file, every init option, both restore selections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from appliance.cli.main import main
from appliance.errors import KeyFileError, KeyPermissionError
from appliance.provenance.sign import check_signing_key
from appliance.signing import PublicKey, SigningKey

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


@pytest.fixture(scope="module")
def keyfiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file of each kind a user may pass where a key is asked for."""
    d = tmp_path_factory.mktemp("keys")
    SigningKey.generate("ed25519").save(d / "ed")
    SigningKey.generate("ecdsa-p256").save(d / "ec")
    (d / "garbage").write_text("not a key\n")
    (d / "garbage").chmod(0o600)
    return {
        "ed25519 private": d / "ed",
        "ed25519 public": d / "ed.pub",
        "ecdsa private": d / "ec",
        "ecdsa public": d / "ec.pub",
        "missing": d / "nope",
        "garbage": d / "garbage",
    }


ROLES = {  # role -> (loader, the kinds it accepts, words its remedy must contain on refusal)
    "trust/verify": (PublicKey.load, {"ed25519 public", "ecdsa public"}, ["public key", ".pub"]),
    "sign": (SigningKey.load, {"ed25519 private", "ecdsa private"}, ["private key"]),
    "sign-model": (check_signing_key, {"ecdsa private"}, ["ECDSA P-256", "--type ecdsa-p256"]),
}


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize(
    "kind", ["ed25519 private", "ed25519 public", "ecdsa private", "ecdsa public", "missing", "garbage"]
)
def test_every_key_file_in_every_role_is_accepted_or_refused_with_the_remedy_of_that_role(keyfiles: dict[str, Path], role: str, kind: str) -> None:  # fmt: skip
    load, accepted, words = ROLES[role]
    if kind in accepted:
        load(keyfiles[kind])
        return
    with pytest.raises(KeyFileError) as caught:
        load(keyfiles[kind])
    err = caught.value
    assert type(err) is KeyFileError and err.exit_code == 11  # never a permission error for a public key
    for word in words:
        assert word in err.remedy, (role, kind, err.remedy)
    if role != "sign-model":  # the trial's wrong remedy: "private: PEM PKCS#8 Ed25519" for everything
        assert "Ed25519)" not in err.remedy
    if kind.endswith("public") and role != "trust/verify":
        assert "is a public key" in err.problem and "private key file" in err.remedy
    if kind.endswith("private") and role == "trust/verify":
        assert "is a private key" in err.problem and f"{keyfiles[kind]}.pub" in err.remedy


def test_a_private_key_others_may_read_is_still_refused_for_its_mode(tmp_path: Path) -> None:
    SigningKey.generate().save(tmp_path / "k")
    (tmp_path / "k").chmod(0o644)
    with pytest.raises(KeyPermissionError, match="mode 0644"):
        SigningKey.load(tmp_path / "k")


def test_the_trial_key_mixups_through_the_cli(keyfiles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code, out = run(capsys, "init", str(tmp_path / "s"), "--trust", str(keyfiles["ed25519 private"]))
    assert code == 11 and "is a private key" in out["problem"] and ".pub" in out["remedy"]
    assert not (tmp_path / "s").exists()
    assert run(capsys, "init", str(tmp_path / "s"), "--trust", str(keyfiles["ed25519 public"]))[0] == 0
    save_file({"w": torch.ones(2)}, str(tmp_path / "m.safetensors"))
    code, out = run(capsys, "commit", str(tmp_path / "s"), str(tmp_path / "m.safetensors"), "--key", str(keyfiles["ed25519 public"]))  # fmt: skip
    assert code == 11 and "public key" in out["problem"] and str(keyfiles["ed25519 private"]) in out["remedy"]
    assert run(capsys, "commit", str(tmp_path / "s"), str(tmp_path / "m.safetensors"), "--key", str(keyfiles["ed25519 private"]))[0] == 0  # fmt: skip
    code, out = run(capsys, "restore", str(tmp_path / "s"), "--out", f"{tmp_path / 'd'}/", "--sign-model", str(keyfiles["missing"]))  # fmt: skip
    assert code == 11 and "--type ecdsa-p256" in out["remedy"] and not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--frame-size", "3"), ("--frame-size", "4097"), ("--keep", "0"), ("--keep", "1000"), ("--model", "")],
)
def test_a_bad_init_option_is_a_usage_error_naming_the_option_not_store_json(keyfiles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:  # fmt: skip
    root = tmp_path / "s"
    code, out = run(capsys, "init", str(root), "--trust", str(keyfiles["ed25519 public"]), option, value)
    assert code == 10 and out["error"] == "UsageError"  # was 18 ConfigError "fix store.json"
    assert out["problem"].startswith(option) and option in out["remedy"] and "store.json" not in out["remedy"]
    assert not root.exists()


def test_node_init_refuses_a_bad_frame_size_before_writing_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code, out = run(capsys, "node-init", str(tmp_path / "node"), "--frame-size", "3")
    assert code == 10 and out["problem"].startswith("--frame-size") and not (tmp_path / "node").exists()


@pytest.fixture
def store(keyfiles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = tmp_path / "s"
    assert run(capsys, "init", str(root), "--trust", str(keyfiles["ed25519 public"]))[0] == 0
    tensors = {"model.layers.0.w": torch.ones(2), "model.layers.1.w": torch.zeros(3, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"format": "pt", "appliance.generation": "999"})
    code, out = run(capsys, "commit", str(root), str(tmp_path / "m.safetensors"), "--key", str(keyfiles["ed25519 private"]))  # fmt: skip
    assert code == 0 and out["dropped_header_keys"] == ["appliance.generation"]
    return root


@pytest.mark.parametrize("patterns", [["nomatch*"], ["Model.*"], ["layers.0.*"], ["x", "y*"]])
def test_tensors_matching_nothing_names_the_option_and_how_to_list_the_names(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], patterns: list[str]) -> None:  # fmt: skip
    argv = [a for p in patterns for a in ("--tensors", p)]
    code, out = run(capsys, "restore", str(store), "--out", f"{tmp_path / 'o'}/", *argv)
    assert code == 10 and out["problem"].startswith("--tensors") and patterns[0] in out["problem"]
    assert "log ROOT --tensors" in out["remedy"] and "destination" not in out["remedy"]
    code, log = run(capsys, "log", str(store), "--tensors")
    listed = [t["name"] for t in log["checkpoints"][0]["tensor_list"]]
    assert code == 0 and listed == ["model.layers.0.w", "model.layers.1.w"]
    assert log["checkpoints"][0]["tensor_list"][1] == {"name": "model.layers.1.w", "dtype": "bfloat16", "shape": [3]}
    main(["log", str(store), "--tensors"])
    assert "model.layers.1.w  bfloat16[3]" in capsys.readouterr().out


def test_appliance_header_keys_in_a_source_are_dropped_and_said_so_and_restore_writes_its_own(store: Path, keyfiles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """README exit 25 vs the CLI: API callers are refused; a source file's keys are dropped, visibly."""
    main(["commit", str(store), str(tmp_path / "m.safetensors"), "--key", str(keyfiles["ed25519 private"])])
    assert "dropped the source's header keys appliance.generation" in capsys.readouterr().out
    code, out = run(capsys, "restore", str(store), "--out", str(tmp_path / "r.safetensors"))
    assert code == 0 and out["warnings"] == []
    with safe_open(str(tmp_path / "r.safetensors"), framework="pt") as f:
        assert (f.metadata() or {})["appliance.generation"] == "2"  # the real one, not the source's 999


def test_a_file_out_without_suffix_or_over_an_existing_file_is_said(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code, out = run(capsys, "restore", str(store), "--out", str(tmp_path / "newdir"))
    assert code == 0 and (tmp_path / "newdir").is_file()
    assert len(out["warnings"]) == 1 and "no .safetensors suffix" in out["warnings"][0] and "DIR/" in out["warnings"][0]
    (tmp_path / "mine.safetensors").write_bytes(b"x")
    code, out = run(capsys, "restore", str(store), "--out", str(tmp_path / "mine.safetensors"))
    assert code == 0 and out["warnings"] == [f"--out {tmp_path / 'mine.safetensors'} existed and is replaced"]
