"""The damage matrix (Conserve style): action x location on a real store, each case from a clean copy.

Store: generations 1 and 3 in slot A, 2 and 4 in slot B (keep=2); the newest, 4, is damaged.
Every case must be detected (``verify`` flags generation 4 or it is no longer committed),
boot must restore generation 3 bit-exact from the other slot, and the next persist must
succeed and boot. A frame lost in both slots ends in recovery mode, never a patched model.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.crypto import KekSource
from appliance.format.manifest import FrameRef
from appliance.format.slotstate import unknown
from appliance.signing import SigningKey
from appliance.store import layout
from appliance.store.bootstate import SlotStates
from appliance.store.config import StoreConfig
from appliance.store.store import Store

from . import counts
from .boot import BOOT, BOOT_WRITES_SLOT_STATE
from .model import FRAME, MODEL_ID, History

pytestmark = pytest.mark.faults

NEWEST, FALLBACK = 4, 3
BITFLIPS = 8  # bit flips per location, at spread offsets


class Template:
    def __init__(self, root: Path, signer: SigningKey, history: History, kek: KekSource | None = None) -> None:
        self.root = root
        self.signer = signer
        self.history = history
        config = StoreConfig(model=MODEL_ID, frame_size=FRAME, encrypt=kek is not None)
        store = Store.init(root, [signer.public], config, kek=kek)
        for step in range(1, NEWEST + 1):
            store.commit(history.sources(step), [signer], {"step": step})
        opened = store.select().opened
        assert (opened.slot, opened.generation) == ("B", NEWEST)
        manifest = opened.verified.manifest
        delta = next(f for t in manifest.tensors for f in t.frames if f.base is not None)
        index = manifest.frame_index()
        self.frame = next(f for t in manifest.tensors for f in t.frames if f.base is None)
        self.base: FrameRef = index[delta.base] if delta.base is not None else delta
        # a frame to swap in: neither damaged location itself (sealed stores' digests vary per run)
        self.other_frame = next(
            f for f in sorted(index.values(), key=lambda f: f.digest) if f not in (self.frame, self.base)
        )


def _region(data: bytes, key: bytes) -> tuple[int, int]:
    start = data.index(b'"' + key + b'":"') + len(key) + 4
    return start, data.index(b'"', start)


def locations(t: Template) -> dict[str, tuple[str, Callable[[bytes], tuple[int, int]], str]]:
    """location -> (file, region of it that bit flips and garbage hit, a valid file to swap in)."""
    whole: Callable[[bytes], tuple[int, int]] = lambda d: (0, len(d))  # noqa: E731
    bundle, other_bundle = layout.bundle_path("B", NEWEST), layout.bundle_path("B", NEWEST - 2)
    return {
        "frame": (layout.frame_path("B", t.frame.digest), whole, layout.frame_path("B", t.other_frame.digest)),
        "manifest": (bundle, lambda d: _region(d, b"payload"), other_bundle),
        "signature": (bundle, lambda d: _region(d, b"sig"), other_bundle),
        "commit record": (layout.record_path("B", NEWEST), whole, layout.record_path("B", NEWEST - 2)),
        "delta base": (layout.frame_path("B", t.base.digest), whole, layout.frame_path("B", t.other_frame.digest)),
    }


ACTIONS = ["bitflip", "truncate-0", "truncate-1", "truncate-half", "truncate-n-1", "delete", "replace", "garbage"]


def damage(root: Path, path: str, region: Callable[[bytes], tuple[int, int]], swap: str, action: str, k: int) -> None:
    target = root / path
    data = target.read_bytes()
    lo, hi = region(data)
    rng = random.Random(k * 7919 + len(path))
    if action == "bitflip":
        offset = lo + (hi - lo) * k // BITFLIPS
        out = bytearray(data)
        out[offset] ^= 1 << (k % 8)
        target.write_bytes(bytes(out))
    elif action.startswith("truncate"):
        n = len(data)
        size = {"truncate-0": 0, "truncate-1": 1, "truncate-half": n // 2, "truncate-n-1": n - 1}[action]
        target.write_bytes(data[:size])
    elif action == "delete":
        target.unlink()
    elif action == "replace":
        target.write_bytes((root / swap).read_bytes())
    elif action == "garbage":
        start = lo + rng.randrange(0, max(1, hi - lo))
        start -= start % 512 if hi - lo > 512 else start - lo
        end = min(len(data), start + 512)
        target.write_bytes(data[:start] + rng.randbytes(end - start) + data[end:])


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, history: History) -> Template:
    return Template(tmp_path_factory.mktemp("damage") / "store", SigningKey.generate(), history)


def _cases() -> list[tuple[str, str, int]]:
    out = []
    for location in ("frame", "manifest", "signature", "commit record", "delta base"):
        for action in ACTIONS:
            for k in range(BITFLIPS if action in ("bitflip", "garbage") else 1):
                out.append((location, action, k))
    return out


@pytest.mark.parametrize(("location", "action", "k"), _cases(), ids=lambda v: str(v).replace(" ", "-"))
def test_damage_is_detected_the_other_slot_restores_and_the_next_persist_succeeds(
    location: str, action: str, k: int, template: Template, tmp_path: Path
) -> None:
    """Damage to the newest checkpoint: detected, generation 3 restores bit-exact, next commit boots."""
    root = tmp_path / "store"
    shutil.copytree(template.root, root)
    path, region, swap = locations(template)[location]
    damage(root, path, region, swap, action, k)
    counts.add("damage.cases")
    store = Store.open(root)
    report = store.verify()
    flagged = [c for c in report.checkpoints if c.generation == NEWEST]
    assert all(not c.ok for c in flagged), f"verify missed {action} of the {location}"
    outcome = BOOT(store.storage, store.config, store.trust)
    assert outcome.generation == FALLBACK and outcome.contents == template.history.digest(FALLBACK)
    counts.add("damage.detected")
    step = NEWEST + 1
    result, _ = store.commit(template.history.sources(step), [template.signer], {"step": step})
    after = BOOT(store.storage, store.config, store.trust)
    assert after.generation == result.generation and after.contents == template.history.digest(step)


def test_a_frame_lost_in_both_slots_ends_in_recovery_mode_never_a_patched_model(
    template: Template, tmp_path: Path
) -> None:
    """A frame every checkpoint names, deleted from both slots: recovery mode; then a commit recovers."""
    root = tmp_path / "store"
    shutil.copytree(template.root, root)
    store = Store.open(root)
    shared = set.intersection(
        *(set(store.select(generation=g).opened.verified.manifest.frame_index()) for g in range(NEWEST - 1, NEWEST + 1))
    )
    everywhere = [d for d in sorted(shared) if all((root / s / "frames" / d.hex).exists() for s in "AB")]
    for slot in "AB":
        (root / slot / "frames" / everywhere[0].hex).unlink()
    counts.add("damage.cases")
    outcome = BOOT(store.storage, store.config, store.trust)
    older = list(range(1, NEWEST - 1))
    assert outcome.recovery or outcome.generation in older
    if outcome.generation is not None:
        assert outcome.contents == template.history.digest(outcome.generation)
    counts.add("damage.detected")
    result, _ = store.commit(template.history.sources(9), [template.signer])
    assert BOOT(store.storage, store.config, store.trust).generation == result.generation


@pytest.mark.skipif(
    not BOOT_WRITES_SLOT_STATE,
    reason="needs issue-4 boot state: {A,B}/state.json is written by the boot supervisor (set BOOT in boot.py)",
)
@pytest.mark.parametrize("action", ACTIONS)
def test_damaged_slot_state_never_blocks_boot(action: str, template: Template, tmp_path: Path) -> None:
    """Slot state damage: boot still yields the newest verified checkpoint; the next persist boots."""
    root = tmp_path / "store"
    shutil.copytree(template.root, root)
    store = Store.open(root)
    assert BOOT(store.storage, store.config, store.trust).generation == NEWEST  # B/state.json: GOOD, gen 4
    SlotStates(store.storage).write(unknown("A"))  # A was never booted: give it a state file to damage
    for k, slot in enumerate("AB"):
        other = layout.slot_state_path("B" if slot == "A" else "A")  # valid, but for the other slot
        damage(root, layout.slot_state_path(slot), lambda d: (0, len(d)), other, action, k)
        counts.add("damage.cases")
        outcome = BOOT(store.storage, store.config, store.trust)
        assert outcome.generation == NEWEST and outcome.contents == template.history.digest(NEWEST)
        counts.add("damage.detected")
    result, _ = store.commit(template.history.sources(NEWEST + 1), [template.signer])
    assert BOOT(store.storage, store.config, store.trust).generation == result.generation


@pytest.mark.parametrize("edit", ["drop-newline", "add-space", "pretty-print"])
def test_a_commit_record_differing_by_any_byte_is_not_committed(edit: str) -> None:
    """The commit point is byte-exact: a torn newline or re-serialised JSON is not a commit."""
    import json

    from appliance.errors import ManifestError
    from appliance.format.commit import CommitRecord
    from appliance.format.digest import Digest

    record = CommitRecord("A", 7, Digest.of(b"b"), 10, Digest.of(b"m"), "2026-01-01T00:00:00Z")
    data = record.to_bytes()
    assert CommitRecord.from_bytes(data) == record
    edited = {
        "drop-newline": data[:-1],
        "add-space": data[:1] + b" " + data[1:],
        "pretty-print": json.dumps(json.loads(data), indent=2).encode(),
    }[edit]
    with pytest.raises(ManifestError):
        CommitRecord.from_bytes(edited)
