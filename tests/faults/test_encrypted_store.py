"""The crash and damage suites on an encrypted store (issue 18), and no plaintext in any crash state.

Scope (CI budget): the no-plaintext check runs on **every** write path at every cut point, with
unsynced drops and torn writes, over every inode of the image (temp files and unlinked-but-kept
inodes included). The oracle (boot yields the acknowledged or in-flight generation, bit-exact)
runs on a representative subset of paths (``ORACLE_PATHS``: first commit, delta, compaction,
retention with keep=1, a rotten target frame, scrub repair) at every cut and on torn writes; the
damage matrix runs every location with a subset of actions (``SEALED_ACTIONS``); the hostile-input
cases that touch stored bytes (planted symlinks, a frame swapped between verify and use, a
decompression bomb behind a trusted signature, sealed or not) run on a sealed victim. The plain-store
suites (test_power_cut, test_damage) cover the rest of the space; sealing changes what the bytes
are, not the write order.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.crypto import FileKek
from appliance.signing import SigningKey
from appliance.storage.recording import Image, apply
from appliance.store.store import Store

from . import counts
from . import test_hostile_files as hostile
from .boot import BOOT
from .checker import CrashChecker
from .crashstates import build, cuts, torn, unsynced
from .forge import Victim, plant_predicate
from .model import SPEC, History, Keys
from .test_damage import FALLBACK, NEWEST, Template, damage, locations
from .workloads import PATHS, Recorded

pytestmark = pytest.mark.faults

ORACLE_PATHS = ("first", "delta", "compact", "gc-keep1", "rotten-target", "scrub-repair")
SEALED_ACTIONS = [("bitflip", 0), ("bitflip", 5), ("truncate-half", 0), ("delete", 0), ("replace", 0), ("garbage", 0)]


def needles(history: History, steps: range = range(12)) -> list[bytes]:
    """16-byte windows of every random tensor of every step the paths commit (their plaintext)."""
    out: set[bytes] = set()
    for step in steps:
        for name, data in history.state(step).items():
            if name in ("optim.m", "train.step"):  # zeros and a counter: not recognisable plaintext
                continue
            out.update(data[i : i + 16].tobytes() for i in range(0, data.size - 16, 509))
    return sorted(out)


def plaintext_in(image: Image, found: list[bytes]) -> list[int]:
    """Inodes (reachable or not: temp files, unlinked-but-kept) whose bytes hold any needle."""
    return [inode for inode, data in image.files.items() if data and any(n in data for n in found)]


@pytest.fixture(scope="module")
def plain_needles(history: History) -> list[bytes]:
    return needles(history)


@pytest.mark.parametrize("name", list(PATHS))
def test_no_plaintext_in_any_crash_state_of_an_encrypted_store(
    name: str, recorded_sealed: dict[str, Recorded], plain_needles: list[bytes]
) -> None:
    rec = recorded_sealed[name]
    states = [*cuts(rec.ops), *unsynced(rec.ops, 2, random.Random(18)), *torn(rec.ops)]
    bad = []
    for state in states:
        image = build(rec.base, rec.ops, state)
        if plaintext_in(image, plain_needles):
            bad.append(state.describe(rec.ops))
    counts.add("encrypted: crash states searched for plaintext", len(states))
    assert bad == []


def test_the_plaintext_search_finds_the_plain_store_s_frames(
    recorded: dict[str, Recorded], plain_needles: list[bytes]
) -> None:
    """Negative control: the same history on a plain store does leave its bytes on the medium."""
    rec = recorded["first"]
    final = rec.base.copy()
    for op in rec.ops:
        apply(final, op)
    assert plaintext_in(final, plain_needles)


@pytest.mark.parametrize("name", ORACLE_PATHS)
def test_power_cut_on_an_encrypted_store_keeps_the_oracle(
    name: str, recorded_sealed: dict[str, Recorded], keys: Keys, history: History
) -> None:
    path = recorded_sealed[name]
    checker = CrashChecker(path, keys, history)
    checker.run(cuts(path.ops))
    checker.run(torn(path.ops))
    counts.add("encrypted: oracle crash states", len(path.ops) + 1)
    checker.assert_clean()


@pytest.fixture(scope="module")
def sealed_template(tmp_path_factory: pytest.TempPathFactory, history: History) -> Template:
    root = tmp_path_factory.mktemp("sealed-damage")
    kek = FileKek.create(root / "store.kek")
    return Template(root / "store", SigningKey.generate(), history, kek)


@pytest.mark.parametrize("location", ["frame", "manifest", "signature", "commit record", "delta base"])
@pytest.mark.parametrize(("action", "k"), SEALED_ACTIONS)
def test_damage_on_an_encrypted_store_falls_back_bit_exact(
    location: str, action: str, k: int, sealed_template: Template, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(sealed_template.root, root)
    path, region, swap = locations(sealed_template)[location]
    damage(root, path, region, swap, action, k)
    store = Store.open(root)
    assert all(not c.ok for c in store.verify().checkpoints if c.generation == NEWEST)
    outcome = BOOT(store.storage, store.config, store.trust)
    assert outcome.generation == FALLBACK and outcome.contents == sealed_template.history.digest(FALLBACK)
    counts.add("encrypted: damage cases")
    result, _ = store.commit(sealed_template.history.sources(NEWEST + 1), [sealed_template.signer], {})
    after = BOOT(store.storage, store.config, store.trust)
    assert after.generation == result.generation


def test_spec_tensors_are_random_enough_to_be_found() -> None:
    """The needles come from random tensors (compressed plain frames keep them verbatim)."""
    assert {"layer.w", "layer.e", "layer.v"} <= set(SPEC)
    assert np.unique(np.frombuffer(b"".join(needles(History(5), range(1))), np.uint8)).size > 200


# --- hostile inputs on an encrypted store (representative subset of test_hostile_files / test_zstd_bombs) ---


@pytest.fixture
def sealed_victim(tmp_path: Path, history: History) -> Victim:
    return Victim(tmp_path / "store", history, kek=FileKek.create(tmp_path / "store.kek"))


@pytest.mark.parametrize("where", hostile.SYMLINK_TARGETS)
def test_planted_symlink_on_an_encrypted_store_is_never_followed(
    where: str, sealed_victim: Victim, tmp_path: Path
) -> None:
    assert sealed_victim.manifest(3).encryption is not None
    hostile.test_planted_symlink_is_never_followed(where, sealed_victim, tmp_path)


@pytest.mark.parametrize("when", ["before", "after", "grow"])
def test_sealed_frame_swapped_between_verify_and_use(when: str, sealed_victim: Victim) -> None:
    hostile.test_frame_swapped_between_verify_and_use(when, sealed_victim)


@pytest.mark.parametrize("sealed_by", ["nobody (plain bytes)", "the data key (a key holder's bomb)"])
def test_a_bomb_behind_a_trusted_signature_on_an_encrypted_store_falls_back(
    sealed_by: str, sealed_victim: Victim
) -> None:
    """Without the key the bomb fails authentication (58); sealed with it, the zstd checks refuse it."""
    from appliance.codec.frames import Scratch
    from appliance.errors import FrameAuthenticationError, IntegrityError
    from appliance.format.codec_name import CodecSpec
    from appliance.format.digest import Digest
    from appliance.format.manifest import FrameRef
    from appliance.store import layout
    from appliance.store.keys import cipher_for
    from appliance.store.sealed import aad_of, decode_stored

    from .test_zstd_bombs import bombs

    victim = sealed_victim
    data, codec, raw = bombs()["forged content size 1 GiB"]
    m3 = victim.manifest(3)
    cipher = cipher_for(victim.store.storage, m3.encryption)
    assert cipher is not None
    predicate = m3.to_dict()
    target = next(f for f in predicate["tensors"][0]["frames"] if f["raw_size"] == raw and "base" not in f)
    draft = FrameRef(Digest.of(data), len(data), Digest(target["raw_digest"]), raw, CodecSpec.parse(codec))
    stored = bytes(cipher.seal(data, aad_of(cipher, draft))) if sealed_by.startswith("the data key") else data
    bomb = FrameRef(Digest.of(stored), len(stored), draft.raw_digest, raw, draft.codec)
    with pytest.raises(IntegrityError) as info:  # what the restore meets, after the stored digest matched
        decode_stored(stored, bomb, np.empty(raw, np.uint8), Scratch(), cipher)
    assert isinstance(info.value, FrameAuthenticationError) == sealed_by.startswith("nobody")
    target.update(bomb.to_dict())
    predicate["generation"] = 4
    predicate["totals"]["stored_bytes"] = sum(
        {f["digest"]: f["size"] for t in predicate["tensors"] for f in t["frames"]}.values()
    ) + sum(b["size"] for b in predicate["bases"])
    (victim.root / layout.frame_path("A", bomb.digest)).write_bytes(stored)
    plant_predicate(victim, predicate, [victim.signer])
    victim.assert_boots_honest(3)
    counts.add("encrypted: hostile cases")
