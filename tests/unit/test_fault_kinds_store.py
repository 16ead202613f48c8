"""Issue 12, kinds 3 (degenerate commits evict real ones) and 4 (the writer accepts what readers refuse).

Torch-free: sources are numpy arrays. Property tests cover nesting and sizes at the limits:
whatever the commit accepts, the reader accepts, and whatever the reader would refuse, the
commit refuses with an input-error code before writing anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.cli.main import main
from appliance.errors import ApplianceError, CheckpointNotFoundError, ConfigError, SourceFormatError, UsageError
from appliance.format.canonical import json_depth
from appliance.format.validate import check_metadata, metadata_max_depth
from appliance.limits import DEFAULT_LIMITS
from appliance.signing import SigningKey
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.store import Store

pytestmark = pytest.mark.unit
KEY = SigningKey.generate()


def _store(tmp: Path, keep: int = 2) -> Store:
    return Store.init(tmp / "store", [KEY.public], StoreConfig(model="m", frame_size=4096, keep=keep))


def _real(seed: int = 0) -> list[TensorSource]:
    data = np.random.default_rng(seed).integers(0, 256, 8192, dtype=np.uint8)
    return [TensorSource("w", "uint8", (8192,), lambda: data)]


def _nested(depth: int) -> dict[str, Any]:
    """A metadata object whose ``json_depth`` is exactly ``depth`` (>= 2)."""
    value: Any = 1
    for _ in range(depth - 2):
        value = [value]
    return {"k": value}


def _files(store: Store) -> set[str]:
    root = Path(store.storage.root)  # type: ignore[attr-defined]
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != layout.LOCK_FILE}


# --- kind 3 -------------------------------------------------------------------------------------


def test_kind3_zero_tensor_checkpoints_are_refused_unless_asked_for(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(UsageError, match="no tensors") as caught:
        store.commit([], [KEY])
    assert caught.value.exit_code == 10
    result, _ = store.commit([], [KEY], {"note": "metadata only"}, allow_empty=True)
    assert result.generation == 1


def test_kind3_metadata_only_commits_never_evict_the_real_model(tmp_path: Path) -> None:
    """Regression: four zero-tensor commits with keep=2 deleted the model; restore of gen 1 'not committed'."""
    store = _store(tmp_path, keep=2)
    real, _ = store.commit(_real(), [KEY])
    for i in range(4):
        store.commit([], [KEY], {"i": i}, allow_empty=True)
    store.gc()
    opened = store.select(real.generation).opened
    assert opened.generation == real.generation and len(opened.verified.manifest.tensors) == 1


def _zero(shape: tuple[int, ...], name: str = "z") -> TensorSource:
    return TensorSource(name, "float32", shape, lambda: np.empty(0, dtype=np.uint8))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=3).filter(lambda d: 0 in d),
                       min_size=1, max_size=3))  # fmt: skip
def test_kind3_checkpoints_whose_tensors_all_have_zero_elements_are_refused(
    tmp_path_factory: pytest.TempPathFactory, shapes: list[list[int]]
) -> None:
    """Regression (new-user trial): one ``torch.zeros(0)`` counted as "with tensors" and evicted the model."""
    store = _store(tmp_path_factory.mktemp("z"))
    sources = [_zero(tuple(shape), f"z{i}") for i, shape in enumerate(shapes)]
    with pytest.raises(UsageError, match="no tensor data") as caught:
        store.commit(sources, [KEY])
    assert caught.value.exit_code == 10 and store.log() == []


def test_kind3_zero_element_commits_never_evict_the_real_model(tmp_path: Path) -> None:
    """The trial's input: keep=1, a real model, then four checkpoints of one zero-element tensor."""
    store = _store(tmp_path, keep=1)
    real, _ = store.commit(_real(), [KEY])
    for _ in range(4):
        store.commit([_zero((0,))], [KEY], allow_empty=True)
    store.gc()
    assert store.select(real.generation).opened.verified.manifest.tensors[0].name == "w"


def test_kind3_retention_keeps_pinned_and_newest_with_tensors(tmp_path: Path) -> None:
    store = _store(tmp_path, keep=1)
    factory, _ = store.commit(_real(1), [KEY])
    store.pin(factory.generation, "factory")
    for seed in range(2, 7):
        store.commit(_real(seed), [KEY])
    store.gc()
    assert store.select(factory.generation).opened.generation == factory.generation
    store.unpin(factory.generation)
    store.gc()
    with pytest.raises(ApplianceError):
        store.select(factory.generation)


def test_kind3_pin_refuses_uncommitted_generations_and_damaged_pins_stop_commits(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(CheckpointNotFoundError):
        store.pin(7)
    (tmp_path / "store" / layout.PINS).write_text("{not json")
    with pytest.raises(ConfigError, match="pins.json"):
        store.commit(_real(), [KEY])


def test_kind3_pin_cli_lists_pins_and_unpin_releases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path)
    store.commit(_real(), [KEY])
    root = str(tmp_path / "store")
    assert main(["pin", root, "1", "--label", "factory", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"pins": [{"generation": 1, "label": "factory"}]}
    assert main(["unpin", root, "1"]) == 0
    capsys.readouterr()
    assert main(["pin", root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"pins": []}
    assert main(["unpin", root, "1"]) == CheckpointNotFoundError.exit_code


# --- kind 4 -------------------------------------------------------------------------------------


def test_kind4_metadata_nested_62_levels_commits_only_if_readers_accept_it(tmp_path: Path) -> None:
    """Regression: ~62 levels committed (exit 0), then no reader accepted it; now the boundary is the same."""
    store = _store(tmp_path)
    limit = metadata_max_depth()
    assert limit == DEFAULT_LIMITS.json_max_depth - 2
    ok, _ = store.commit(_real(), [KEY], _nested(limit))
    report = store.verify()
    assert report.all_ok and report.newest_valid is not None and report.newest_valid.generation == ok.generation
    assert store.select(ok.generation).opened.verified.manifest.metadata == _nested(limit)
    before = _files(store)
    with pytest.raises(UsageError, match="nested deeper") as caught:
        store.commit(_real(1), [KEY], _nested(limit + 1))
    assert caught.value.exit_code == 10 and _files(store) == before
    assert f"at most {limit - 1} nested objects or lists" in caught.value.problem  # new-user trial: count unclear


def test_kind4_twenty_thousand_levels_give_a_typed_error_not_recursion_error(tmp_path: Path) -> None:
    store = _store(tmp_path)
    deep: Any = 0
    for _ in range(20_000):
        deep = {"d": deep}
    with pytest.raises(UsageError, match="nested deeper"):
        store.commit(_real(), [KEY], {"x": deep})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(UsageError, match="nested deeper"):
        store.commit(_real(), [KEY], cyclic)


@pytest.mark.parametrize("name", ["../escape", "/abs", "a//b", "bad\x00name", "e\u0301", "x" * 1025, ""])
def test_kind4_bad_tensor_names_are_input_errors_before_any_write(tmp_path: Path, name: str) -> None:
    """Regression: bad tensor names exited 34 (damaged manifest) instead of an input-error code."""
    store = _store(tmp_path)
    before = _files(store)
    data = np.zeros(8192, np.uint8)
    sources = [*_real(), TensorSource(name, "uint8", (8192,), lambda: data)]
    with pytest.raises(UsageError) as caught:
        store.commit(sources, [KEY])
    assert 10 <= caught.value.exit_code <= 29 and _files(store) == before


def test_kind4_cli_input_refusals_use_input_error_codes(tmp_path: Path) -> None:
    pytest.importorskip(
        "torch", reason="`appliance commit` reads sources with torch (absent from the Python 3.10 smoke)"
    )
    from safetensors.numpy import save_file

    _store(tmp_path)
    key = tmp_path / "k.pem"
    key.write_bytes(KEY.private_pem())
    key.chmod(0o600)  # a key file others may read is refused (KeyPermissionError)
    src = tmp_path / "m.safetensors"
    save_file({"w": np.zeros(4, np.float32)}, str(src))
    meta = json.dumps(_nested(metadata_max_depth() + 1))
    code = main(["commit", str(tmp_path / "store"), str(src), "--key", str(key), "--meta", meta])
    assert code == UsageError.exit_code
    bad = tmp_path / "bad.safetensors"
    save_file({"../escape": np.zeros(4, np.float32)}, str(bad))
    # was 34; a source file's defect, named with its file (new-user trial): SourceFormatError, 12
    assert main(["commit", str(tmp_path / "store"), str(bad), "--key", str(key)]) == SourceFormatError.exit_code
    empty = tmp_path / "e.safetensors"
    save_file({}, str(empty))
    assert main(["commit", str(tmp_path / "store"), str(empty), "--key", str(key)]) == UsageError.exit_code
    assert main(["commit", str(tmp_path / "store"), str(empty), "--key", str(key), "--allow-empty"]) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(2, 80), width=st.integers(1, 3))
def test_kind4_property_writer_accepts_exactly_what_the_reader_accepts(
    tmp_path_factory: pytest.TempPathFactory, depth: int, width: int
) -> None:
    """Nesting around the cap: the commit succeeds iff the committed statement parses with the reader."""
    store = _store(tmp_path_factory.mktemp("nest"))
    meta = {f"k{i}": _nested(depth)["k"] for i in range(width)}
    reader_would_accept = json_depth(meta) + 2 <= DEFAULT_LIMITS.json_max_depth
    try:
        result, _ = store.commit(_real(), [KEY], meta)
    except UsageError:
        assert not reader_would_accept
        return
    assert reader_would_accept
    assert store.select(result.generation).opened.verified.manifest.metadata == meta


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
        max_leaves=30,
    )
)
def test_kind4_property_metadata_check_is_total_and_typed(value: Any) -> None:
    """Any value: the shared validator returns canonical bytes or raises the given error class, nothing else."""
    try:
        data = check_metadata({"v": value}, UsageError)
    except UsageError:
        return
    assert json.loads(data) == json.loads(json.dumps({"v": value}, sort_keys=True))


def test_kind4_metadata_size_at_the_cap_commits_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    cap = DEFAULT_LIMITS.metadata_max_bytes
    overhead = len(b'{"s":""}')
    ok, _ = store.commit(_real(), [KEY], {"s": "x" * (cap - overhead)})
    assert len(store.select(ok.generation).opened.verified.manifest.metadata["s"]) == cap - overhead
    before = _files(store)
    with pytest.raises(UsageError, match="bytes; the cap is"):
        store.commit(_real(1), [KEY], {"s": "x" * (cap - overhead + 1)})
    assert _files(store) == before


@pytest.mark.parametrize(
    "canary",
    [{"input": [[1.0]]}, {"input": [], "expected": [1.0]}, {"input": [["a"]], "expected": [[1.0]]}, "not an object"],
)
def test_kind4_a_canary_no_boot_could_use_is_refused_at_commit(tmp_path: Path, canary: Any) -> None:
    """A sibling of kind 4: boot's gate would refuse the canary (and mark the slot BAD); the commit refuses it first."""
    store = _store(tmp_path)
    before = _files(store)
    with pytest.raises(UsageError, match="not a valid canary"):
        store.commit(_real(), [KEY], {"canary": canary})
    assert _files(store) == before
    ok, _ = store.commit(_real(), [KEY], {"canary": {"input": [[1.0]], "expected": [[2.0]]}})
    assert ok.generation == 1


def test_pin_errors_name_the_pins_and_never_suggest_reinitialising(tmp_path: Path) -> None:
    """New-user trial: a damaged pins.json said "re-initialise the store"; unpin of an unpinned one said `log`."""
    store = _store(tmp_path)
    real, _ = store.commit(_real(), [KEY])
    with pytest.raises(CheckpointNotFoundError) as caught:
        store.unpin(real.generation)
    assert "appliance pin ROOT" in caught.value.remedy
    (Path(store.storage.root) / layout.PINS).write_text("{not json")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as damaged:
        store.pins()
    assert "pins.json aside" in damaged.value.remedy and "re-initialise" not in damaged.value.remedy


def test_kind3_empty_assets_do_not_make_a_checkpoint_count_as_data(tmp_path: Path) -> None:
    """Second trial: zero-element tensors plus an empty README, four times with keep=1, evicted the model."""
    import io

    from appliance.store.assets import AssetSource, DirectoryParts

    store = _store(tmp_path, keep=1)
    real, _ = store.commit(_real(), [KEY])
    readme = DirectoryParts((AssetSource("README.md", 0, lambda: io.BytesIO(b"")),))
    for _ in range(4):
        store.commit([_zero((0,))], [KEY], allow_empty=True, directory=readme)
    store.gc()
    assert store.select(real.generation).opened.verified.manifest.tensors[0].name == "w"
