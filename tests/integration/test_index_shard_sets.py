"""An index and its shard set agree: no shard left out, referenced-but-missing, stray, or doubled.

The new-user trial found an index that leaves out a whole shard committed (exit 0) with that
shard kept as an opaque asset. Every way an index and the weight files beside it can disagree
is refused before anything is written (``SourceFormatError``, exit 12) naming the files and
their tensors; the property test walks that space over real files, the trial's input stays
as a regression test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from appliance.errors import SourceFormatError
from appliance.format.directory import INDEX_NAME, INDEX_REMEDY
from appliance.sources.model_dir import directory_parts
from appliance.sources.safetensors_io import open_model
from tests.integration.test_model_dirs import SHARD2, model_dir, run, state

pytestmark = pytest.mark.integration

NAMES = [f"t{i}" for i in range(6)]


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """A store and a signing key made with the CLI, as test_model_dirs' fixture."""
    key, root = tmp_path / "k", tmp_path / "store"
    assert run(capsys, "keygen", str(key))[0] == 0
    assert run(capsys, "init", str(root), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096")[0] == 0
    return {"key": str(key), "root": str(root)}


def tensors() -> dict[str, torch.Tensor]:
    return {n: torch.full((3,), float(i)) for i, n in enumerate(NAMES)}


def shard(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def write(path: Path, files: dict[str, list[str]], weight_map: dict[str, str]) -> Path:
    path.mkdir()
    t = tensors()
    for file, names in files.items():
        save_file({n: t[n] for n in names}, str(path / file), metadata={"format": "pt"})
    (path / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text("{}")
    return path


MUTATIONS = [
    "none",
    "drop a whole shard from the map",
    "drop one tensor from the map",
    "name a ghost tensor",
    "move a tensor to another shard",
    "copy a tensor into a second shard",
    "delete a referenced shard file",
    "stray numbered shard beside the index",
    "model.safetensors beside the index",
    "gap in the numbering (file and entries gone)",
    "consolidated.safetensors beside the index",  # another format's weights: an asset, accepted
]
ACCEPTED = {"none", "consolidated.safetensors beside the index"}


def mutate(case: str, sizes: list[int]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Shard files (name -> tensors) and a weight_map: a saved model's, then changed by ``case``."""
    n, names = len(sizes), iter(NAMES)
    files = {shard(i, n): [next(names) for _ in range(size)] for i, size in enumerate(sizes, start=1)}
    weight_map = {name: file for file, held in files.items() for name in held}
    first, last = shard(1, n), shard(n, n)
    if case == "drop a whole shard from the map":
        weight_map = {k: v for k, v in weight_map.items() if v != last}
    elif case == "drop one tensor from the map":
        del weight_map[files[last][0]]
    elif case == "name a ghost tensor":
        weight_map["ghost"] = first
    elif case == "move a tensor to another shard":
        weight_map[files[last][0]] = first if n > 1 else "other.safetensors"
    elif case == "copy a tensor into a second shard":
        files[last] = [*files[last], files[first][0]]
    elif case == "delete a referenced shard file":
        del files[last]
    elif case == "stray numbered shard beside the index":
        files[shard(n + 1, n + 1)] = [NAMES[0]]
    elif case == "model.safetensors beside the index":
        files["model.safetensors"] = list(NAMES[: sum(sizes)])
    elif case == "gap in the numbering (file and entries gone)":
        weight_map = {k: v for k, v in weight_map.items() if v != last}
        del files[last]
    elif case == "consolidated.safetensors beside the index":
        files["consolidated.safetensors"] = list(NAMES[: sum(sizes)])
    return files, weight_map


_SIZES = st.integers(1, 3).flatmap(lambda k: st.lists(st.integers(1, 2), min_size=k, max_size=k))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_SIZES, st.sampled_from(MUTATIONS))
@example([2, 2, 1], "drop a whole shard from the map")  # the new-user trial's orphan shard (exit 0 before)
def test_an_index_disagreeing_with_its_shard_set_is_refused_and_an_agreeing_one_loads(tmp_path_factory: pytest.TempPathFactory, sizes: list[int], case: str) -> None:  # fmt: skip
    assume(case != "copy a tensor into a second shard" or len(sizes) > 1)
    files, weight_map = mutate(case, sizes)
    path = write(tmp_path_factory.mktemp("d") / "m", files, weight_map)
    try:
        model = open_model(path)
    except SourceFormatError as err:
        assert case not in ACCEPTED, err
        assert err.exit_code == 12 and "shard" in err.remedy and "valid .safetensors file" not in err.remedy
        return
    try:
        assert case in ACCEPTED, f"{case} was accepted"
        held = {name: s.load().tobytes() for s in model.sources for name in [s.name]}
        assert held == {n: tensors()[n].numpy().tobytes() for n in NAMES[: sum(sizes)]}
        assets = {a.path for a in directory_parts(model).assets}
        assert assets == {"config.json"} | ({"consolidated.safetensors"} if "consolidated" in case else set())
    finally:
        model.close()


def test_the_trial_orphan_shard_is_refused_naming_it_and_its_tensors_and_nothing_is_committed(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    """The index omits lm_head.weight, whose shard holds nothing else: was exit 0 with the shard an asset."""
    src = model_dir(tmp_path / "src", state())
    index = json.loads((src / INDEX_NAME).read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != SHARD2}
    (src / INDEX_NAME).write_text(json.dumps(index))
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])
    assert code == 12 and out["error"] == "SourceFormatError"
    assert SHARD2 in out["problem"] and "lm_head.weight" in out["problem"] and "leaves out" in out["problem"]
    assert out["remedy"].startswith(INDEX_REMEDY)
    assert run(capsys, "log", cli["root"])[1]["checkpoints"] == []
    assert list((Path(cli["root"]) / "A" / "frames").iterdir()) == []


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing file", "names shards that are missing"),
        ("not json", "not a valid safetensors index"),
        ("unsafe shard path", "unsafe shard file"),
        ("gap", "model-00002-of-00002.safetensors (absent)"),
    ],
)
def test_every_index_error_names_the_index_fix_not_a_generic_one(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, needle: str) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    index: Any = json.loads((src / INDEX_NAME).read_text())
    if case == "missing file":
        (src / SHARD2).unlink()
    elif case == "not json":
        index = "{not json"
    elif case == "unsafe shard path":
        index["weight_map"]["lm_head.weight"] = "../x.safetensors"
    else:
        (src / SHARD2).unlink()
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != SHARD2}
    (src / INDEX_NAME).write_text(index if isinstance(index, str) else json.dumps(index))
    code, out = run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])
    assert code == 12 and needle in out["problem"]
    assert "weight_map" in out["remedy"] and "valid .safetensors file" not in out["remedy"]


def test_a_directory_restored_whole_recommits_under_the_stricter_rule(cli: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # fmt: skip
    src = model_dir(tmp_path / "src", state())
    assert run(capsys, "commit", cli["root"], str(src), "--key", cli["key"])[0] == 0
    for out, extra in (("whole", []), ("resharded", ["--max-shard-size", "5KB"])):
        assert run(capsys, "restore", cli["root"], "--out", f"{tmp_path / out}/", *extra)[0] == 0
        code, result = run(capsys, "commit", cli["root"], str(tmp_path / out), "--key", cli["key"])
        assert code == 0 and result["frame_kinds"]["full"] + result["frame_kinds"]["delta"] == 0, out
