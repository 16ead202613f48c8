"""Scrub and self-heal: resumable time slices, repair from the verified twin, mark-never-patch.

Power cuts inside a scrub repair are covered by the ``scrub-repair`` write path of
``test_power_cut`` (every cut, ordering and torn state).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance.cli.main import main as cli
from appliance.signing import SigningKey
from appliance.storage.recording import RecordingStorage
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.scrub import EVENT_KINDS, ScrubEvent, load_cursor, scrub
from appliance.store.store import Store

from . import counts
from .boot import BOOT, store_boot
from .model import FRAME, MODEL_ID, History, Keys
from .workloads import Recorder

pytestmark = pytest.mark.faults


class FakeClock:
    """Advances one second per reading: a slice's length is counted in frames, not wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _store(keys: Keys, history: History, commits: int = 3) -> Recorder:
    rec = Recorder(keys, history)
    for _ in range(commits):
        rec.commit()
    return rec


def _frame_paths(storage: RecordingStorage) -> list[str]:
    return [p for p in storage.walk() if "/frames/" in p]


def test_scrub_repairs_a_rotten_frame_from_its_verified_twin(keys: Keys, history: History) -> None:
    """A frame rotten in one slot is replaced by the other slot's verified copy; boot is newest again."""
    rec = _store(keys, history)
    digest = rec.rot_frame("A", 3, shared=True)
    assert store_boot(rec.storage, rec.config, keys.trust).generation == 2  # damage makes restore fall back
    events: list[ScrubEvent] = []
    report = scrub(rec.storage, keys.trust, MODEL_ID, sink=events.append)
    counts.add("scrub.repairs")
    assert [(r["slot"], r["digest"]) for r in report.repaired] == [("A", digest)]
    assert report.pass_completed and not report.marked
    data = rec.storage.read(f"A/frames/{digest}", 1 << 20)
    assert hashlib.sha256(data).hexdigest() == digest
    assert BOOT(rec.storage, rec.config, keys.trust).generation == 3  # no boot saw the rot: it boots again
    assert {e.kind for e in events} >= {"scrub.started", "scrub.frame_repaired", "scrub.pass_completed"}
    assert {e.kind for e in events} <= set(EVENT_KINDS)


def test_a_checkpoint_boot_marked_bad_stays_bad_after_scrub_heals_it(keys: Keys, history: History) -> None:
    """Documents the interplay with issue 4: BAD is sticky; a healed checkpoint waits for a slot reset (or a new mark)."""
    rec = _store(keys, history)
    rec.rot_frame("A", 3, shared=True)
    assert BOOT(rec.storage, rec.config, keys.trust).generation == 2  # boot marks A/gen 3 BAD
    assert scrub(rec.storage, keys.trust, MODEL_ID).repaired
    assert store_boot(rec.storage, rec.config, keys.trust).generation == 3  # verifiable again
    assert BOOT(rec.storage, rec.config, keys.trust).generation == 2  # but boot still skips it


def test_scrub_marks_but_never_patches_a_frame_damaged_in_both_slots(keys: Keys, history: History) -> None:
    """No verified twin: the frame is marked, its bytes are left exactly as found."""
    rec = _store(keys, history)
    digest = rec.rot_frame("A", 3, shared=True)
    path_b = f"B/frames/{digest}"
    rec.storage.unlink(path_b)  # the twin is gone too
    before = {p: rec.storage.read(p, 1 << 20) for p in _frame_paths(rec.storage)}
    report = scrub(rec.storage, keys.trust, MODEL_ID)
    after = {p: rec.storage.read(p, 1 << 20) for p in _frame_paths(rec.storage)}
    assert after == before, "scrub wrote frame bytes it could not verify"
    marked = {(m["slot"], m["digest"]) for m in report.marked}
    assert marked == {("A", digest), ("B", digest)}
    assert load_cursor(rec.storage)[0].marked, "the mark must survive in scrub.json"
    outcome = BOOT(rec.storage, rec.config, keys.trust)
    assert outcome.recovery or (outcome.generation == 1 and outcome.contents == rec.contents[1])


def test_scrub_works_in_bounded_resumable_slices(keys: Keys, history: History) -> None:
    """Each slice stops at its budget; successive slices visit every frame exactly once per pass."""
    rec = _store(keys, history)
    total = len(_frame_paths(rec.storage))
    clock, slices, checked = FakeClock(), 0, 0
    while True:
        report = scrub(rec.storage, keys.trust, MODEL_ID, max_seconds=4, clock=clock)
        slices += 1
        checked += report.frames_checked
        assert report.frames_checked <= 4
        if report.pass_completed:
            break
        assert slices < 100
    assert checked == total and slices > 1
    assert report.passes_completed == 1
    again = scrub(rec.storage, keys.trust, MODEL_ID, max_bytes=1)
    assert again.pass_number == 2 and again.frames_checked == 1  # a byte budget still makes progress


def test_scrub_finds_every_injected_corruption_within_one_pass_of_slices(keys: Keys, history: History) -> None:
    """Ten rotten frames spread over both slots are all found and repaired within one pass."""
    rec = _store(keys, history, commits=4)
    names = {slot: {p.rsplit("/", 1)[1] for p in _frame_paths(rec.storage) if p.startswith(slot)} for slot in "AB"}
    shared = sorted(names["A"] & names["B"])
    rotten = [f"{'AB'[i % 2]}/frames/{digest}" for i, digest in enumerate(shared[:10])]
    assert len(rotten) == 10, "the fixture needs ten frames stored in both slots"
    for path in rotten:
        _rot(rec.storage, path)
    repaired: set[str] = set()
    clock = FakeClock()
    for _ in range(50):
        report = scrub(rec.storage, keys.trust, MODEL_ID, max_seconds=3, clock=clock)
        repaired |= {f"{r['slot']}/frames/{r['digest']}" for r in report.repaired}
        if report.pass_completed:
            break
    counts.add("scrub.repairs", len(repaired))
    assert repaired == set(rotten)


def test_a_damaged_scrub_cursor_starts_a_new_pass(keys: Keys, history: History) -> None:
    """Garbage in scrub.json never stops a scrub: it is reported and a fresh pass begins."""
    rec = _store(keys, history)
    rec.storage.write_new(layout.SCRUB_STATE, b'{"format": "appliance.scrub", "pass": -1')
    events: list[ScrubEvent] = []
    report = scrub(rec.storage, keys.trust, MODEL_ID, sink=events.append)
    assert "scrub.cursor_reset" in {e.kind for e in events}
    assert report.pass_completed and report.resumed_from is None


def test_scrub_reports_a_checkpoint_whose_bundle_is_damaged(keys: Keys, history: History) -> None:
    """A committed checkpoint that no longer opens is reported; it cannot be repaired from a twin."""
    rec = _store(keys, history)
    bundle = layout.bundle_path("A", 3)
    data = bytearray(rec.storage.read(bundle, 1 << 24))
    data[100] ^= 1
    rec.storage.unlink(bundle)
    rec.storage.write_new(bundle, bytes(data))
    events: list[ScrubEvent] = []
    report = scrub(rec.storage, keys.trust, MODEL_ID, sink=events.append)
    assert [(u["slot"], u["generation"]) for u in report.unusable_checkpoints] == [("A", 3)]
    assert "scrub.checkpoint_unusable" in {e.kind for e in events}


def test_scrub_replaces_a_planted_symlink_without_following_it(tmp_path: Path, keys: Keys, history: History) -> None:
    """A frame swapped for a symlink is treated as damaged and replaced; the link target is untouched."""
    signer = keys.signer
    store = Store.init(tmp_path / "store", [signer.public], StoreConfig(model=MODEL_ID, frame_size=FRAME))
    for step in (1, 2, 3):
        store.commit(history.sources(step), [signer])
    root = tmp_path / "store"
    frames_a = sorted((root / "A" / "frames").iterdir())
    victim = next(p for p in frames_a if (root / "B" / "frames" / p.name).exists())
    outside = tmp_path / "outside"
    outside.write_bytes(b"not a frame")
    victim.unlink()
    victim.symlink_to(outside)
    report = scrub(store.storage, store.trust, MODEL_ID)
    assert [r["digest"] for r in report.repaired] == [victim.name]
    assert not victim.is_symlink() and hashlib.sha256(victim.read_bytes()).hexdigest() == victim.name
    assert outside.read_bytes() == b"not a frame"


def test_scrub_cli_exit_codes_say_clean_repaired_or_marked(tmp_path: Path, history: History) -> None:
    """0 clean, 1 repaired from the twin, 35 (FrameError) damaged in both slots."""
    signer = SigningKey.generate()
    root = tmp_path / "store"
    store = Store.init(root, [signer.public], StoreConfig(model=MODEL_ID, frame_size=FRAME))
    for step in (1, 2, 3):
        store.commit(history.sources(step), [signer])
    assert cli(["scrub", str(root), "--json"]) == 0
    frames_a = sorted((root / "A" / "frames").iterdir())
    victim = next(p for p in frames_a if (root / "B" / "frames" / p.name).exists())
    _flip(victim)
    assert cli(["scrub", str(root)]) == 1
    _flip(victim)
    _flip(root / "B" / "frames" / victim.name)
    assert cli(["scrub", str(root), "--restart"]) == 35
    saved = json.loads((root / layout.SCRUB_STATE).read_text())
    assert {m["slot"] for m in saved["marked"]} == {"A", "B"}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _rot(storage: RecordingStorage, path: str) -> None:
    data = bytearray(storage.read(path, 1 << 24))
    data[0] ^= 0x80
    storage.unlink(path)
    storage.write_new(path, bytes(data))
