"""Hostile files: planted symlinks and FIFOs, malformed safetensors, armed pickles, TOCTOU swaps.

Each case ends in a typed error (and boot restores an honest checkpoint) within bounded time.
Decompression bombs: ``test_zstd_bombs.py``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import api
from appliance.errors import SourceFormatError, UnsafePathError
from appliance.format.codec_name import IDENTITY
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef
from appliance.sources.safetensors_io import open_model
from appliance.storage import LocalStorage
from appliance.store import layout
from appliance.store.store import Store

from . import counts
from .forge import Victim, plant_predicate
from .inject import FaultyStorage
from .model import History

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def victim(tmp_path: Path, history: History) -> Victim:
    return Victim(tmp_path / "store", history)


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Fail (instead of hanging CI) if a case blocks; not a speed assertion."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("a hostile file made the store block")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- symlinks and special files ---------------------------------------------------------


def _frame_only_in_a(victim: Victim) -> Path:
    m3, m1 = victim.manifest(3), victim.manifest(1)
    digest = next(d for d in m3.frame_index() if d not in m1.frame_index())
    return victim.root / layout.frame_path("A", digest)


SYMLINK_TARGETS = ["slot", "checkpoints dir", "bundle", "commit record", "frame"]


@pytest.mark.parametrize("where", SYMLINK_TARGETS)
def test_planted_symlink_is_never_followed(where: str, victim: Victim, tmp_path: Path) -> None:
    """A store entry swapped for a symlink to a valid copy is refused; boot restores slot B's checkpoint."""
    counts.add("hostile.cases")
    entry = {
        "slot": victim.root / "A",
        "checkpoints dir": victim.root / "A" / "checkpoints",
        "bundle": victim.root / layout.bundle_path("A", 3),
        "commit record": victim.root / layout.record_path("A", 3),
        "frame": _frame_only_in_a(victim),
    }[where]
    copy = tmp_path / "outside" / entry.name
    copy.parent.mkdir()
    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, copy)
    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    entry.symlink_to(copy)
    victim.assert_boots_honest(2)
    if where in ("bundle", "commit record", "frame"):
        flagged = {(c.slot, c.generation): c.error_class for c in victim.store.verify().checkpoints}
        assert flagged[("A", 3)] == UnsafePathError.__name__


def test_planted_fifo_never_blocks_boot(victim: Victim, hang_guard: None) -> None:
    """A FIFO in place of a frame is refused at once (opened non-blocking, not a regular file)."""
    counts.add("hostile.cases")
    frame = _frame_only_in_a(victim)
    frame.unlink()
    os.mkfifo(frame)
    victim.assert_boots_honest(2)
    with pytest.raises(UnsafePathError):
        LocalStorage(victim.root).read(str(frame.relative_to(victim.root)), 1 << 20)


# --- safetensors imports --------------------------------------------------------------------


def _st(header: bytes | dict[str, object], data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


F32 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
SAFETENSORS_CASES = {
    "header length 2^63": _st(b"{}", length=1 << 63),
    "header past end of file": _st(b"{}", length=1000),
    "header is not JSON": _st(b"not json at all"),
    "offsets past the end": _st({"t": F32}, b"\0" * 8),
    "shape and size disagree": _st({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8),
    "overlapping tensors": _st({"a": F32, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24),
    "unreferenced trailing bytes": _st({"t": F32}, b"\0" * 64),
    "unknown dtype": _st({"t": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "shape product overflow": _st(
        {"t": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}, b"\0" * 16
    ),
    "a pickle named .safetensors": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94.",
}


def _import_all(path: Path) -> None:
    model = open_model(path)
    try:
        for source in model.sources:
            source.load()
    finally:
        model.close()


@pytest.mark.parametrize("case", list(SAFETENSORS_CASES))
def test_malformed_safetensors_import_is_a_typed_error(case: str, tmp_path: Path) -> None:
    """Each malformed file the safetensors parser must reject ends in SourceFormatError."""
    counts.add("hostile.cases")
    path = tmp_path / "model.safetensors"
    path.write_bytes(SAFETENSORS_CASES[case])
    with pytest.raises(SourceFormatError):
        _import_all(path)


ST_DTYPES = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "C64", "F99", "", "f32"]
st_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(ST_DTYPES),
        "shape": st.lists(st.integers(-2, 2**40) | st.sampled_from([0, 1, 2, 4]), max_size=4),
        "data_offsets": st.lists(st.integers(-1, 2**40) | st.sampled_from([0, 4, 8, 16, 64]), max_size=3),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(st.text(max_size=6), st_entries | st.just("junk"), max_size=3),
    data=st.binary(max_size=128),
    length_delta=st.sampled_from([0, 0, 0, 1, -1, 1 << 40]),
)
def test_fuzzed_safetensors_headers_import_or_raise_source_format_error(
    header: dict[str, object], data: bytes, length_delta: int
) -> None:
    """Random safetensors headers: imported, or SourceFormatError; never another exception."""
    counts.add("hostile.cases")
    raw = json.dumps(header).encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.safetensors"
        path.write_bytes(_st(raw, data, length=max(0, len(raw) + length_delta)))
        with contextlib.suppress(SourceFormatError):
            _import_all(path)


def test_safetensors_index_naming_a_shard_outside_the_directory_is_refused(tmp_path: Path) -> None:
    """model.safetensors.index.json may only name plain shard files inside the model directory."""
    counts.add("hostile.cases")
    (tmp_path / "model").mkdir()
    (tmp_path / "evil.safetensors").write_bytes(_st({"t": F32}, b"\0" * 16))
    index = {"weight_map": {"t": "../evil.safetensors"}}
    (tmp_path / "model" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceFormatError):
        _import_all(tmp_path / "model")


# --- pickles --------------------------------------------------------------------------------


def _armed_pickle(canary: Path) -> bytes:
    """Protocol-0 pickle whose *unpickling* creates ``canary`` (built without the pickle module)."""
    return b"cbuiltins\nopen\n(V" + str(canary).encode() + b"\nVw\ntR."


def test_the_pickle_payload_is_armed(tmp_path: Path) -> None:
    """Control: unpickling the planted payload (in a throwaway child) does create the canary."""
    canary = tmp_path / "armed"
    code = "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=_armed_pickle(canary), check=False, timeout=60)
    assert canary.exists()


def test_a_pickle_planted_anywhere_is_never_unpickled(victim: Victim, tmp_path: Path) -> None:
    """As a frame, an import source or a stray file: restored as bytes or refused, never executed."""
    counts.add("hostile.cases", 4)
    canary = tmp_path / "canary"
    payload = _armed_pickle(canary)
    (victim.root / "A" / "frames" / "model.pt").write_bytes(payload)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(SourceFormatError):
        _import_all(model_dir)
    (model_dir / "model.safetensors").write_bytes(payload)
    with pytest.raises(SourceFormatError):
        _import_all(model_dir)
    m3 = victim.manifest(3)
    predicate = m3.to_dict()
    frame = FrameRef(Digest.of(payload), len(payload), Digest.of(payload), len(payload), IDENTITY)
    predicate["tensors"] = [{"name": "pickled", "dtype": "uint8", "shape": [len(payload)], "frames": [frame.to_dict()]}]
    predicate["bases"], predicate["generation"] = [], 4
    predicate["totals"] = {"tensors": 1, "raw_bytes": len(payload), "stored_bytes": len(payload)}
    (victim.root / layout.frame_path("A", frame.digest)).write_bytes(payload)
    plant_predicate(victim, predicate, [victim.signer])
    loaded = api.load(victim.reopen())
    assert loaded.generation == 4 and loaded.tensors["pickled"].numpy().tobytes() == payload
    victim.store.gc()
    assert not canary.exists(), "a planted pickle was unpickled"


BANNED_CALLS = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}


def test_no_unpickling_anywhere_in_the_package() -> None:
    """No module of appliance/ imports an unpickler or calls torch.load / numpy.load."""
    offenders = []
    for path in (REPO / "appliance").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in BANNED_CALLS for n in names):
                    offenders.append(f"{path}:{node.lineno}")
            elif _is_unpickling_load(node):
                offenders.append(f"{path}:{node.lineno}")
    assert not offenders, offenders


def _is_unpickling_load(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "load"
        and isinstance(node.value, ast.Name)
        and node.value.id in ("torch", "np", "numpy")
    )


# --- TOCTOU: a file swapped between verify and use -----------------------------------------


def _swapping_store(victim: Victim, swap: str, when: str) -> Store:
    """The victim's store through a wrapper that rewrites ``swap`` on its first read, before or after it."""
    real = victim.root / swap
    honest = real.read_bytes()
    state = {"done": False}
    inner = LocalStorage(victim.root)

    def tamper() -> None:
        if when == "grow":
            real.write_bytes(honest + b"more")
        else:
            real.write_bytes(bytes(b ^ 0xFF for b in honest))

    class Swapping(FaultyStorage):
        def read_into(self, path: str, out: memoryview) -> int:
            first = path == swap and not state["done"]
            state["done"] = state["done"] or first
            if first and when in ("before", "grow"):
                tamper()
            size = self.inner.read_into(path, out)
            if first and when == "after":
                tamper()  # the bytes already read were verified; later changes must not matter
            return size

        def read(self, path: str, max_size: int) -> bytes:
            if path == swap and not state["done"]:
                state["done"] = True
                real.write_bytes((victim.root / layout.bundle_path("A", 1)).read_bytes())
            return self.inner.read(path, max_size)

    return Store(Swapping(inner), victim.store.config, victim.store.trust)


@pytest.mark.parametrize("when", ["before", "after", "grow"])
def test_frame_swapped_between_verify_and_use(when: str, victim: Victim) -> None:
    """Restore hashes the very bytes it decodes: a swap before use falls back, a swap after is harmless."""
    counts.add("hostile.cases")
    frame = _frame_only_in_a(victim)
    store = _swapping_store(victim, str(frame.relative_to(victim.root)), when)
    loaded = api.load(store, workers=1)
    expected = 3 if when == "after" else 2
    assert loaded.generation == expected


def test_bundle_swapped_between_scan_and_read(victim: Victim) -> None:
    """A bundle replaced after its record was read no longer matches the record: fall back."""
    counts.add("hostile.cases")
    store = _swapping_store(victim, layout.bundle_path("A", 3), "bundle")
    assert api.load(store, workers=1).generation == 2
