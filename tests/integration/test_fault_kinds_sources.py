"""Issue 12, kind 5: the source changes under the commit (truncated, grown, rewritten in place).

The file is changed from the commit's own progress callback, so the change lands at an exact
point of the commit (deterministic, no timing races). Each case must end in a typed
``SourceChangedError`` (exit 20), with every frame the commit wrote removed and the previous
checkpoint intact; never a signal, never a checkpoint mixing two versions of the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from appliance.errors import SourceChangedError
from appliance.signing import SigningKey
from appliance.sources.safetensors_io import open_model
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.store import Store

pytestmark = pytest.mark.integration


def _write_model(path: Path, tensors: int, elems: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    save_file({f"t{i}": rng.standard_normal(elems).astype(np.float32) for i in range(tensors)}, str(path))


def _store_files(store: Store) -> set[str]:
    root = Path(store.storage.root)  # type: ignore[attr-defined]
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != layout.LOCK_FILE}


def _mutate(path: Path, op: str, offset: int) -> None:
    size = path.stat().st_size
    if op == "replace":  # `mv new.safetensors m.safetensors`: same size, another inode under the name
        _write_model(path.with_suffix(".new"), 4, 8192, seed=3)
        os.replace(path.with_suffix(".new"), path)
        return
    if op == "chmod":  # nothing but the inode's status changed
        path.chmod(0o600)
        return
    with path.open("r+b") as f:
        if op == "truncate":
            f.truncate(offset % size)
        elif op == "grow":
            f.seek(0, os.SEEK_END)
            f.write(b"\0" * (1 + offset % 4096))
        else:  # rewrite one byte in place (same size)
            f.seek(offset % size)
            byte = f.read(1)
            f.seek(offset % size)
            f.write(bytes([byte[0] ^ 0xFF]))


def _commit_with_change(store: Store, key: SigningKey, path: Path, op: str, offset: int, after: int) -> None:
    model = open_model(path)
    calls = [0]

    def progress(_: int) -> None:
        calls[0] += 1
        if calls[0] == after:
            _mutate(path, op, offset)

    try:
        store.commit(model.sources, [key], progress=progress)
    finally:
        model.close()


@pytest.fixture
def store(tmp_path: Path) -> tuple[Store, SigningKey]:
    key = SigningKey.generate()
    return Store.init(tmp_path / "store", [key.public], StoreConfig(model="m", frame_size=4096)), key


SAYS = {
    "truncate": "was truncated from",
    "grow": "grew from",
    "rewrite": "was rewritten in place",
    "replace": "was replaced by another file",  # new-user trial: an mv was reported as a rewrite
    "chmod": "had its inode changed",
}


@pytest.mark.parametrize("op", sorted(SAYS))
def test_kind5_source_changed_during_commit_is_a_typed_error_and_leaves_nothing(
    store: tuple[Store, SigningKey], tmp_path: Path, op: str
) -> None:
    s, key = store
    path = tmp_path / "m.safetensors"
    _write_model(path, 4, 8192, seed=1)
    model = open_model(path)
    first, _ = s.commit(model.sources, [key])
    model.close()
    before = _store_files(s)
    _write_model(path, 4, 8192, seed=2)
    with pytest.raises(SourceChangedError) as caught:
        _commit_with_change(s, key, path, op, offset=50_000, after=3)
    assert caught.value.exit_code == 20 and str(path) in caught.value.problem
    assert SAYS[op] in caught.value.problem, caught.value.problem
    assert _store_files(s) == before  # partial frames removed
    assert s.select().opened.generation == first.generation and s.verify().all_ok


def test_kind5_truncated_384mib_class_source_does_not_kill_the_process(tmp_path: Path) -> None:
    """Regression: a safetensors file truncated while `appliance commit` read it died by SIGBUS (exit 135).

    A 48 MiB file (the issue had 384 MiB; the mechanism is the same) truncated to 1 MiB after
    the first frames: run in a child process so that a signal death is observed, not suffered.
    """
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import numpy as np
        from safetensors.numpy import save_file
        from appliance.errors import ApplianceError
        from appliance.signing import SigningKey
        from appliance.sources.safetensors_io import open_model
        from appliance.store.config import StoreConfig
        from appliance.store.store import Store

        tmp = Path({str(tmp_path)!r})
        key = SigningKey.generate()
        store = Store.init(tmp / "store", [key.public], StoreConfig(model="m"))
        path = tmp / "big.safetensors"
        save_file({{f"t{{i}}": np.ones(1 << 20, np.float32) * i for i in range(12)}}, str(path))
        model = open_model(path)
        calls = [0]
        def progress(_):
            calls[0] += 1
            if calls[0] == 2:
                with path.open("r+b") as f:
                    f.truncate(1 << 20)
        try:
            store.commit(model.sources, [key], progress=progress)
        except ApplianceError as exc:
            print(type(exc).__name__, exc.problem, file=sys.stderr)
            frames = list((tmp / "store").glob("*/frames/*"))
            print("orphans", len(frames), file=sys.stderr)
            sys.exit(exc.exit_code)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == SourceChangedError.exit_code, (done.returncode, done.stderr[-2000:])
    assert "SourceChangedError" in done.stderr and "truncated" in done.stderr
    assert "orphans 0" in done.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    op=st.sampled_from(["truncate", "grow", "rewrite"]),
    offset=st.integers(0, 10**7),
    after=st.integers(1, 12),
)
def test_kind5_property_a_source_mutated_at_random_offsets_never_commits_a_mixture(
    tmp_path_factory: pytest.TempPathFactory, op: str, offset: int, after: int
) -> None:
    tmp = tmp_path_factory.mktemp("mut")
    key = SigningKey.generate()
    s = Store.init(tmp / "store", [key.public], StoreConfig(model="m", frame_size=4096))
    path = tmp / "m.safetensors"
    _write_model(path, 3, 4096, seed=offset % 97)  # 3 tensors x 4 frames: 12 progress calls
    before = _store_files(s)
    with pytest.raises(SourceChangedError):
        _commit_with_change(s, key, path, op, offset, after)
    assert _store_files(s) == before


def _mutate_asset(path: Path, op: str, offset: int) -> None:
    if op == "replace":
        path.with_suffix(".new").write_bytes(b"B" * path.stat().st_size)
        os.replace(path.with_suffix(".new"), path)
    elif op == "chmod":
        path.chmod(0o600)
    else:
        with path.open("r+b") as f:
            size = path.stat().st_size
            if op == "truncate":
                f.truncate(offset % size)
            elif op == "grow":
                f.seek(0, os.SEEK_END)
                f.write(b"B" * (1 + offset % 4096))
            else:  # rewritten in place at the same size, the new-user trial's case
                f.seek(offset % size)
                f.write(b"B" * min(4096, size - offset % size))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(sorted(SAYS)), offset=st.integers(0, 10**7), after=st.integers(1, 20))  # 20 frames
def test_kind5_property_an_asset_changed_during_commit_is_never_stored_as_a_mixture(
    tmp_path_factory: pytest.TempPathFactory, op: str, offset: int, after: int
) -> None:
    """Regression (new-user trial): tokenizer.json rewritten in place during `commit` was stored half old, half new.

    The model directory holds one shard (4 frames) and a 64 KiB asset (16 frames); the asset is
    changed after a random number of frames, before, during or after its own frames are read.
    """
    from appliance.sources.model_dir import directory_parts

    tmp = tmp_path_factory.mktemp("asset")
    key = SigningKey.generate()
    s = Store.init(tmp / "store", [key.public], StoreConfig(model="m", frame_size=4096))
    model_dir = tmp / "model"
    model_dir.mkdir()
    _write_model(model_dir / "model.safetensors", 1, 4096)
    asset = model_dir / "tokenizer.json"
    asset.write_bytes(b"A" * 65536)
    model = open_model(model_dir)
    calls = [0]

    def progress(_: int) -> None:
        calls[0] += 1
        if calls[0] == after:
            _mutate_asset(asset, op, offset)

    before = _store_files(s)
    try:
        with pytest.raises(SourceChangedError) as caught:
            s.commit(model.sources, [key], progress=progress, directory=directory_parts(model))
    finally:
        model.close()
    assert caught.value.exit_code == 20 and "tokenizer.json" in caught.value.problem
    assert _store_files(s) == before


@pytest.mark.parametrize("op", ["truncate", "grow"])
def test_kind5_a_shard_changed_while_it_is_opened_is_a_changed_source_not_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    """Regression (new-user trial): this exited 12 "not a valid safetensors file" with a remedy to fix the file."""
    import appliance.sources.safetensors_io as io_mod

    path = tmp_path / "m.safetensors"
    _write_model(path, 2, 4096)
    real = io_mod.safe_open

    def changing(name: str, **kwargs: object) -> object:
        with path.open("r+b") as f:
            if op == "truncate":
                f.truncate(100)
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\0" * 8)
        return real(name, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(io_mod, "safe_open", changing)
    with pytest.raises(SourceChangedError) as caught:
        open_model(path)
    assert caught.value.exit_code == 20


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(after=st.integers(1, 20))
def test_kind5_an_asset_written_through_a_shared_mapping_is_never_stored_as_a_mixture(
    tmp_path_factory: pytest.TempPathFactory, after: int
) -> None:
    """Second trial: writes through a shared mmap to already-dirty pages change neither size, mtime nor
    ctime, so the identity check cannot see them; the commit reads each asset twice and compares."""
    import mmap
    import time

    from appliance import api
    from appliance.sources.model_dir import directory_parts

    tmp = tmp_path_factory.mktemp("mmap")
    key = SigningKey.generate()
    s = Store.init(tmp / "store", [key.public], StoreConfig(model="m", frame_size=4096))
    model_dir = tmp / "model"
    model_dir.mkdir()
    _write_model(model_dir / "model.safetensors", 1, 4096)
    asset = model_dir / "tokenizer.json"
    asset.write_bytes(b"A" * 65536)
    with asset.open("r+b") as f, mmap.mmap(f.fileno(), 0) as shared:
        shared[:] = b"A" * 65536  # every page dirty: later writes to them leave the timestamps alone
        time.sleep(0.1)
        model = open_model(model_dir)
        calls = [0]

        def progress(_: int) -> None:
            calls[0] += 1
            if calls[0] == after:
                shared[:] = b"B" * 65536

        try:
            s.commit(model.sources, [key], progress=progress, directory=directory_parts(model))
        except SourceChangedError as exc:
            assert "tokenizer.json" in exc.problem and s.log() == []
            return
        finally:
            model.close()
    stored = api.load(s, assets=True).assets["tokenizer.json"]
    assert stored in (b"A" * 65536, b"B" * 65536), "a mixture of two versions was committed"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(after=st.integers(1, 12))
def test_kind5_a_shard_written_through_a_shared_mapping_is_never_stored_as_a_mixture(
    tmp_path_factory: pytest.TempPathFactory, after: int
) -> None:
    """Second trial: a shard's tensor bytes flipped through a shared mmap (no identity change) were committed
    half old, half new with exit 0; commits from files read the tensors again and compare the frames."""
    import mmap
    import time

    from appliance import api

    tmp = tmp_path_factory.mktemp("mmapshard")
    key = SigningKey.generate()
    s = Store.init(tmp / "store", [key.public], StoreConfig(model="m", frame_size=4096))
    path = tmp / "m.safetensors"
    save_file({f"t{i:02d}": np.zeros(1024, np.float32) for i in range(12)}, str(path))  # 12 tensors, a frame each
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    size = path.stat().st_size
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0) as shared:
        shared[header:size] = bytes(size - header)  # every page dirty: later writes leave the timestamps alone
        time.sleep(0.1)
        model = open_model(path)
        calls = [0]

        def progress(_: int) -> None:
            calls[0] += 1
            if calls[0] == after:
                shared[header:size] = b"\x3f" * (size - header)

        try:
            s.commit(model.sources, [key], progress=progress, reread=True)
        except SourceChangedError as exc:
            assert "changed" in exc.problem and s.log() == []
            return
        finally:
            model.close()
    loaded = api.load(s).tensors
    stored = b"".join(loaded[f"t{i:02d}"].numpy().tobytes() for i in range(12))
    assert stored in (bytes(size - header), b"\x3f" * (size - header)), "a mixture of two versions was committed"
