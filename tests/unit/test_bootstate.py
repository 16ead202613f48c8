"""Durable slot states: corrupt or missing files read as UNKNOWN with a reason; GOOD states steer commits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import SlotUnavailableError
from appliance.format import slotstate as ss
from appliance.format.slotstate import BootState
from appliance.signing import SigningKey
from appliance.store.bootstate import SlotStates
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.store import Store

pytestmark = [pytest.mark.unit, pytest.mark.faults]
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    key = SigningKey.generate()
    s = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=4096))
    s.key = key  # type: ignore[attr-defined]
    return s


def commit(store: Store, value: int) -> tuple[str, int]:
    data = np.random.default_rng(value).integers(0, 256, 4096, dtype=np.uint8)
    result, _ = store.commit([TensorSource("w", "uint8", (4096,), lambda: data)], [store.key])  # type: ignore[attr-defined]
    return result.slot, result.generation


def test_write_then_read(store: Store) -> None:
    states = SlotStates(store.storage)
    good = ss.mark_good(ss.unknown("B"), 2, "b" * 64, NOW)
    states.write(good)
    assert states.read("B").state == good and states.read("B").damaged is None
    assert states.good_generations() == {"A": None, "B": 2}


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage", b'{"format": "appliance.slot-state"}', b"[]" * 10])
def test_corrupt_state_file_reads_as_unknown_with_a_reason(store: Store, content: bytes) -> None:
    """A damaged state file never stops a boot and never hides the slot's checkpoints."""
    (Path(str(store.storage.root)) / "A" / "state.json").write_bytes(content)  # type: ignore[attr-defined]
    reading = SlotStates(store.storage).read("A")
    assert reading.state.state is BootState.UNKNOWN and reading.damaged and "corrupt" in reading.damaged


def test_state_of_a_slot_that_belongs_to_the_other_slot_is_damage(store: Store) -> None:
    states = SlotStates(store.storage)
    states.write(ss.mark_good(ss.unknown("B"), 2, "b" * 64, NOW))
    root = Path(str(store.storage.root))  # type: ignore[attr-defined]
    (root / "A" / "state.json").write_bytes((root / "B" / "state.json").read_bytes())
    assert states.read("A").damaged


def test_missing_slot_reads_unknown_and_cannot_be_written(store: Store) -> None:
    root = Path(str(store.storage.root))  # type: ignore[attr-defined]
    (root / "B").rename(root / "B.gone")
    states = SlotStates(store.storage)
    assert states.read("B").state.reason == "slot directory is missing"
    with pytest.raises(SlotUnavailableError):
        states.write(ss.unknown("B"))


def test_commits_avoid_the_slot_holding_the_newest_good_checkpoint(store: Store) -> None:
    """Wired into Store.good_provider, a GOOD mark protects its slot even when the other slot is newer."""
    states = SlotStates(store.storage)
    store.good_provider = states.good_generations
    assert commit(store, 1) == ("A", 1)
    assert commit(store, 2) == ("B", 2)
    states.write(ss.mark_good(ss.unknown("A"), 1, "a" * 64, NOW))  # boot proved A/1, B/2 not yet
    assert commit(store, 3) == ("B", 3)
    assert commit(store, 4) == ("B", 4)
    assert 1 in [e["generation"] for e in store.log() if e["slot"] == "A"]
