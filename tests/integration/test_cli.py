"""The CLI is the machine interface: stable exit codes and --json output for every command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from appliance.cli.main import main
from appliance.errors import all_error_classes
from tests.integration.conftest import flip_bit, nudge, same, weights

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in argv and out.strip() else out


@pytest.fixture
def setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    key, root = tmp_path / "k", tmp_path / "store"
    assert run(capsys, "keygen", str(key), "--json")[0] == 0
    assert run(capsys, "init", str(root), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096")[0] == 0
    v1 = weights()
    save_file(v1, str(tmp_path / "v1.safetensors"))
    save_file(nudge(v1, 0.01, 1), str(tmp_path / "v2.safetensors"))
    return {"key": key, "root": root, "v1": tmp_path / "v1.safetensors", "v2": tmp_path / "v2.safetensors"}


def test_lifecycle_through_the_cli(setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root, key = str(setup["root"]), str(setup["key"])
    code, out = run(capsys, "commit", root, str(setup["v1"]), "--key", key, "--meta", '{"step": 1}', "--json")
    assert code == 0 and out["generation"] == 1 and out["slot"] == "A"
    code, out = run(capsys, "commit", root, str(setup["v2"]), "--key", key, "--json")
    assert code == 0 and out["generation"] == 2 and out["frame_kinds"]["delta"] > 0
    code, out = run(capsys, "verify", root, "--deep", "--json")
    assert code == 0 and out["ok"] and out["newest_valid"] == {"slot": "B", "generation": 2}
    code, out = run(capsys, "log", root, "--json")
    assert [(e["generation"], e["slot"]) for e in out["checkpoints"]] == [(2, "B"), (1, "A")]
    assert out["checkpoints"][1]["metadata"] == {"step": 1}
    code, out = run(capsys, "status", root, "--json")
    assert code == 0 and out["next_commit"] == {"slot": "A", "generation": 3}
    restored = tmp_path / "r.safetensors"
    code, out = run(capsys, "restore", root, "--out", str(restored), "--generation", "1", "--json")
    assert code == 0 and not out["fell_back"]
    assert same(load_file(str(restored)), load_file(str(setup["v1"])))
    code, out = run(capsys, "gc", root, "--json")
    assert code == 0 and [s["slot"] for s in out["slots"]] == ["A", "B"]


def test_damage_gives_exit_code_1_and_a_fallback(setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    root, key = str(setup["root"]), str(setup["key"])
    run(capsys, "commit", root, str(setup["v1"]), "--key", key)
    run(capsys, "commit", root, str(setup["v2"]), "--key", key)
    b_only = set((setup["root"] / "B" / "frames").iterdir())
    a_names = {p.name for p in (setup["root"] / "A" / "frames").iterdir()}
    flip_bit(next(p for p in sorted(b_only) if p.name not in a_names))
    code, out = run(capsys, "verify", root, "--json")
    assert code == 1 and out["newest_valid"] == {"slot": "A", "generation": 1}
    code, out = run(capsys, "restore", root, "--out", str(tmp_path / "r.safetensors"), "--json")
    assert code == 1 and out["fell_back"] and out["restore"]["generation"] == 1


def test_no_valid_checkpoint_exit_code(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "verify", str(setup["root"]), "--json")
    assert code == 50 and out["newest_valid"] is None
    code, out = run(capsys, "restore", str(setup["root"]), "--out", "/tmp/x.safetensors", "--json")
    assert code == 50 and out["error"] == "NoValidCheckpointError" and "remedy" in out


@pytest.mark.parametrize(
    ("argv", "code", "error"),
    [
        (["status", "{tmp}/nowhere", "--json"], 13, "StoreNotFoundError"),
        (["commit", "{root}", "{tmp}/missing.safetensors", "--key", "{key}", "--json"], 12, "SourceFormatError"),
        (["commit", "{root}", "{v1}", "--key", "{tmp}/nokey", "--json"], 11, "KeyFileError"),
        (["commit", "{root}", "{v1}", "--key", "{key}", "--meta", "[1]", "--json"], 10, "UsageError"),
        (["commit", "{root}", "{v1}", "--key", "{other}", "--json"], 32, "UntrustedKeyError"),
        (["restore", "{root}", "--out", "{tmp}/o.safetensors", "--generation", "7", "--json"], 17, "CheckpointNotFoundError"),
        (["init", "{root}", "--trust", "{key}.pub", "--json"], 14, "StoreExistsError"),
        (["init", "{key}", "--trust", "{key}.pub", "--json"], 14, "StoreExistsError"),
        (["commit", "{root}", "{v1}", "--key", "{key}", "--meta", "@{tmp}/none.json", "--json"], 10, "UsageError"),
        (["init", "{tmp}/new", "--trust", "{v1}", "--json"], 11, "KeyFileError"),
    ],
)  # fmt: skip
def test_errors_map_to_documented_exit_codes(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], code: int, error: str
) -> None:
    other = tmp_path / "other"
    run(capsys, "keygen", str(other))
    if "{root}" in argv and "restore" in argv:
        run(capsys, "commit", str(setup["root"]), str(setup["v1"]), "--key", str(setup["key"]))
    values = {"tmp": str(tmp_path), "root": str(setup["root"]), "key": str(setup["key"]), "v1": str(setup["v1"]),
              "other": str(other)}  # fmt: skip
    got, out = run(capsys, *[a.format(**values) for a in argv])
    assert (got, out["error"]) == (code, error)
    assert out["remedy"]


def test_trust_add_and_revoke(setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = str(setup["root"])
    new = tmp_path / "new"
    run(capsys, "keygen", str(new))
    code, out = run(capsys, "trust", root, "add", f"{new}.pub", "--comment", "rotation 2026", "--json")
    assert code == 0 and len(out["keys"]) == 2
    old_id = out["keys"][0]["keyid"]
    run(capsys, "commit", root, str(setup["v1"]), "--key", str(new))
    code, out = run(capsys, "trust", root, "revoke", old_id, "--json")
    assert code == 0 and out["revoked"] == [old_id]
    code, out = run(capsys, "commit", root, str(setup["v2"]), "--key", str(setup["key"]), "--json")
    assert code == 33 and out["error"] == "RevokedKeyError"
    assert run(capsys, "verify", root, "--json")[0] == 0


def test_exit_codes_are_unique_and_in_their_ranges() -> None:
    codes: dict[int, str] = {}
    for cls in all_error_classes():
        if cls.__name__ in {"UserError", "UsageError"}:
            continue
        assert cls.exit_code not in codes or codes[cls.exit_code] == cls.__name__, (cls, codes[cls.exit_code])
        codes[cls.exit_code] = cls.__name__
        assert 3 <= cls.exit_code <= 99


def test_console_script_runs_in_a_fresh_interpreter(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("appliance ")
    proc = subprocess.run([sys.executable, "-m", "appliance.cli.main", "status", str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 13 and "remedy:" in proc.stderr


def test_torch_is_not_needed_to_start_the_cli() -> None:
    code = "import sys, appliance.cli.main; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
