"""Deltas: unchanged frames are reused, changed ones stored as XOR deltas, chains stay bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import api
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.integration.conftest import nudge, same, weights

pytestmark = pytest.mark.integration


def _depths(store: Store, generation: int) -> list[int]:
    opened = store.select(generation).opened
    return [f.depth for t in opened.verified.manifest.tensors for f in t.frames]


def test_small_change_is_stored_as_small_deltas(store: Store, key: SigningKey) -> None:
    v1 = weights(n=256 * 1024)
    full = api.save(store, v1, key)
    v2 = nudge(v1, 0.01, seed=1)
    delta = api.save(store, v2, key)
    assert delta.counts["delta"] > 0
    assert delta.counts["reused"] > 0  # "v" did not change: its frames are reused by content
    # 1% of elements moved: the newly encoded (delta) frames are a few % of the full encoding
    assert delta.encoded_bytes < 0.1 * full.encoded_bytes
    # the other slot needs its own copy of the base frames once (slots share no files) ...
    assert delta.copied_bytes > 0
    # ... after which a further small change writes few frame bytes into either slot
    assert same(api.load(store).tensors, v2)
    assert same(api.load(store, generation=full.generation).tensors, v1)
    third = api.save(store, nudge(v2, 0.01, seed=2), key)
    assert third.encoded_bytes + third.copied_bytes < 0.15 * full.encoded_bytes


def test_unchanged_state_writes_no_new_frames_into_a_slot_that_has_them(store: Store, key: SigningKey) -> None:
    state = weights()
    api.save(store, state, key)  # A
    api.save(store, state, key)  # B: copies A's frames (slots share no files)
    third = api.save(store, state, key)  # A again: everything already there
    assert third.counts["reused"] == third.frames
    assert third.counts["copied"] == 0
    root = Path(str(getattr(store.storage, "root")))
    bundle = root / "A" / "checkpoints" / f"{third.generation:020d}.manifest.json"
    record = root / "A" / "checkpoints" / f"{third.generation:020d}.commit.json"
    assert third.written_bytes == bundle.stat().st_size + record.stat().st_size  # nothing else


def test_delta_chain_depth_is_bounded_and_every_generation_restores(tmp_path: Path, key: SigningKey) -> None:
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=4096, max_delta_depth=3, keep=4))
    states = [weights(n=32 * 1024)]
    gens = [api.save(store, states[0], key).generation]
    deepest = 0
    for step in range(1, 9):
        states.append(nudge(states[-1], 0.01, seed=step))
        gens.append(api.save(store, states[-1], key).generation)
        depth = max(_depths(store, gens[-1]))
        assert depth <= 3
        deepest = max(deepest, depth)
    assert deepest == 3  # chains grew to the bound, then restarted from a full frame
    for gen, state in zip(gens, states, strict=True):
        if any(e["generation"] == gen for e in store.log()):
            assert same(api.load(store, generation=gen, deep=True).tensors, state)


def test_compaction_rewrites_a_full_base(store: Store, key: SigningKey) -> None:
    state = weights()
    api.save(store, state, key)
    for step in range(1, 4):
        state = nudge(state, 0.01, seed=step)
        api.save(store, state, key)
    compacted = api.save(store, state, key, full=True)
    assert compacted.counts["delta"] == 0
    assert set(_depths(store, compacted.generation)) == {0}
    assert not store.select(compacted.generation).opened.verified.manifest.bases
    assert same(api.load(store, deep=True).tensors, state)


def test_retention_keeps_the_configured_number_per_slot(store: Store, key: SigningKey) -> None:
    state = weights(n=8 * 1024)
    for step in range(8):
        state = nudge(state, 0.05, seed=step)
        api.save(store, state, key)
    by_slot: dict[str, list[int]] = {}
    for entry in store.log():
        by_slot.setdefault(entry["slot"], []).append(entry["generation"])
    assert {slot: len(g) for slot, g in by_slot.items()} == {"A": 2, "B": 2}
    assert max(max(g) for g in by_slot.values()) == 8
    report = store.verify(deep=True)
    assert report.all_ok, report.to_dict()
