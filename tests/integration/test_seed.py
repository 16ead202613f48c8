"""`appliance seed` commits the factory state only into an empty store (new-user trial 3).

Seeding a store that already held an adapted checkpoint silently committed the factory weights as
the newest generation, which boot then served. It is refused now (exit 14, nothing written) unless
``--force``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.cli.main import main
from appliance.node.config import load_config
from appliance.store.store import Store

pytestmark = pytest.mark.integration


def _seed(capsys: pytest.CaptureFixture[str], node: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    code = main(["seed", "--config", str(node / "node.json"), "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes (directories as markers)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def _generations(node: Path) -> list[tuple[int, str]]:
    return [(e["generation"], e["slot"]) for e in Store.open(node / "store").log()]


@pytest.fixture
def node(tmp_path: Path) -> Path:
    assert main(["node-init", str(tmp_path / "n"), "--frame-size", "65536"]) == 0
    return tmp_path / "n"


def test_seed_on_an_empty_store_commits_generation_1(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code, data, _ = _seed(capsys, node)
    assert code == 0, data
    assert data["generation"] == 1 and _generations(node) == [(1, data["slot"])]


def test_seed_on_a_seeded_store_is_refused_naming_the_newest_generation_and_writes_nothing(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert _seed(capsys, node)[0] == 0
    assert _seed(capsys, node, "--force")[0] == 0  # generation 2, in the other slot
    newest = _generations(node)[0]
    assert newest[0] == 2
    store_before, outbox = _files(node / "store"), load_config(node / "node.json").outbox
    outbox_before = _files(Path(outbox))

    code, error, err = _seed(capsys, node)

    assert code == 14 and error["error"] == "StoreExistsError" and error["exit_code"] == 14
    problem, remedy = error["problem"], error["remedy"]
    assert str(node / "store") in problem and "already seeded" in problem
    assert f"newest committed generation is 2 (slot {newest[1]})" in problem
    assert "--force" in remedy and "appliance boot" in remedy and "tech rollback" in remedy
    assert "nothing was written" in remedy and str(node / "node.json") in remedy
    assert "already seeded" in err and "--force" in err  # the human text on stderr says the same
    assert _generations(node)[0] == newest  # same newest generation
    assert _files(node / "store") == store_before  # not a byte changed, nothing added
    assert _files(Path(outbox)) == outbox_before  # no export left behind for the watchdog


def test_seed_is_refused_also_when_the_stores_checkpoint_does_not_verify(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store in recovery mode holds checkpoints too: replacing them is a deliberate `--force`."""
    capsys.readouterr()
    assert _seed(capsys, node)[0] == 0
    (bundle,) = (node / "store").glob("*/checkpoints/*.manifest.json")
    bundle.write_bytes(bundle.read_bytes().replace(b"{", b"[", 1))  # damaged: the record no longer matches
    code, error, _ = _seed(capsys, node)
    assert code == 14 and "newest committed generation is 1" in error["problem"]
    remedy = error["remedy"]  # trial 4: never "serve what is there" when boot can only enter recovery mode
    assert "None of its committed checkpoints verifies" in remedy and "recovery mode" in remedy
    assert "To serve what is there" not in remedy and "appliance import" in remedy and "--force" in remedy


def test_seed_force_commits_the_factory_state_as_a_new_newest_generation(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert _seed(capsys, node)[0] == 0
    code, data, _ = _seed(capsys, node, "--force")
    assert code == 0, data
    assert data["generation"] == 2 and _generations(node)[0] == (2, data["slot"])
    assert Store.open(node / "store").select().opened.generation == 2


def _node_with(tmp_path: Path, model: str) -> Path:
    root = tmp_path / model
    assert main(["node-init", str(root), "--frame-size", "4096"]) == 0
    config = json.loads((root / "node.json").read_text())
    config["model"] = f"tests.integration.fixture_models:{model}"
    (root / "node.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("model", "code", "error", "says"),
    [
        ("nan_canary", 19, "CanaryInputError", "the canary answer holds NaN or Infinity"),
        ("nan_state", 41, "ExportFileError", "the served state is not finite"),
    ],
)
def test_a_non_finite_canary_answer_at_seed_exits_19_or_41_for_a_non_finite_state_never_59(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, code: int, error: str, says: str
) -> None:
    """README's exit table (trial 3): 59 (`CanaryNotRecordableError`) is the typed check underneath, never an exit."""
    root = _node_with(tmp_path, model)
    capsys.readouterr()
    got, doc, _ = _seed(capsys, root)
    assert (got, doc["error"]) == (code, error) and says in doc["problem"], doc
    assert _generations(root) == []
