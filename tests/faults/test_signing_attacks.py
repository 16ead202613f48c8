"""TUF's attack list mapped onto the store: one named test per attack, on a real store on disk.

Victim: generations 1 and 3 in slot A, 2 in slot B, all signed by the store's trusted key.
Each attack plants its files the way an attacker with write access (or a stolen key) would
and checks that boot refuses them and restores an honest checkpoint bit-exact.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from appliance import api
from appliance.errors import (
    CompatibilityError,
    LimitExceededError,
    ManifestError,
    NoValidCheckpointError,
    RevokedKeyError,
    RollbackError,
    SignatureError,
    UntrustedKeyError,
)
from appliance.format.canonical import canonical_bytes
from appliance.format.manifest import MAX_GENERATION
from appliance.node.floor import FileFloor
from appliance.signing import SigningKey, TrustStore, verify_bundle
from appliance.storage.recording import RecordingStorage
from appliance.store import layout
from appliance.store.bootstate import SlotStates
from appliance.store.store import Store

from . import counts
from .crashstates import CrashState, build, optional_ops
from .forge import Victim, newer, plant, plant_predicate, sign_predicate, unsigned
from .model import History, Keys, empty_store_storage, make_config
from .supervisor import run_supervisor

pytestmark = pytest.mark.faults


@pytest.fixture
def victim(tmp_path: Path, history: History) -> Victim:
    counts.add("signing.attacks")
    return Victim(tmp_path / "store", history)


def _failures(victim: Victim) -> dict[tuple[str, int], type]:
    selection = victim.store.select()
    loaded = api.load(victim.store)
    return {(f.slot, f.generation): type(f.error) for f in [*selection.failures, *loaded.failures]}


# --- arbitrary installation --------------------------------------------------------------


def test_arbitrary_unsigned_checkpoint_is_refused(victim: Victim) -> None:
    """An envelope without signatures never boots (arbitrary installation)."""
    forged = newer(victim.manifest(3), 4)
    with pytest.raises(SignatureError):
        verify_bundle(unsigned(forged), victim.store.trust)
    plant(victim, forged, [])
    victim.assert_boots_honest(3)
    assert _failures(victim)[("A", 4)] is SignatureError


def test_arbitrary_checkpoint_signed_by_a_stranger_is_refused(victim: Victim) -> None:
    """A well-formed checkpoint signed by a key not in the trust store never boots."""
    plant(victim, newer(victim.manifest(3), 4), [SigningKey.generate()])
    victim.assert_boots_honest(3)
    assert _failures(victim)[("A", 4)] is UntrustedKeyError


def test_arbitrary_signature_lifted_from_another_manifest_is_refused(victim: Victim) -> None:
    """A trusted signature copied onto a different payload fails (signatures cover PAE bytes)."""
    honest = json.loads((victim.root / layout.bundle_path("A", 3)).read_bytes())
    forged = json.loads(victim.store.storage.read(layout.bundle_path("A", 3), 1 << 24))
    from appliance.format.statement import statement_payload

    forged["dsseEnvelope"]["payload"] = base64.b64encode(statement_payload(newer(victim.manifest(3), 4))).decode()
    forged["dsseEnvelope"]["signatures"] = honest["dsseEnvelope"]["signatures"]
    plant(victim, newer(victim.manifest(3), 4), [], bundle=canonical_bytes(forged))
    victim.assert_boots_honest(3)
    assert _failures(victim)[("A", 4)] is SignatureError


# --- rollback, floor, fast-forward --------------------------------------------------------


def test_rollback_below_the_floor_is_refused(victim: Victim) -> None:
    """With the floor at 3, the validly signed older checkpoints 1 and 2 are refused, not restored."""
    (victim.root / layout.record_path("A", 3)).unlink()  # the attacker removes the newest
    with pytest.raises(NoValidCheckpointError) as info:
        api.load(victim.store, floor=3)
    assert "anti-rollback floor" in info.value.problem
    selection_errors = []
    try:
        victim.store.select(floor=3)
    except NoValidCheckpointError as exc:
        selection_errors.append(exc.problem)
    assert selection_errors and RollbackError.__name__ in selection_errors[0]


def test_rollback_by_replaying_an_old_checkpoint_as_a_new_generation_is_refused(victim: Victim) -> None:
    """Generation 1's signed bundle renamed to generation 4 fails: the generation is signed."""
    old = (victim.root / layout.bundle_path("A", 1)).read_bytes()
    plant(victim, victim.manifest(1), [], generation=4, bundle=old)
    victim.assert_boots_honest(3)
    assert _failures(victim)[("A", 4)] is ManifestError


class WatchedFloor:
    """A file floor that remembers, for each raise, how many storage operations had been issued."""

    def __init__(self, path: Path, storage: RecordingStorage) -> None:
        self.inner = FileFloor(path)
        self.storage = storage
        self.raises: list[tuple[int, int]] = []  # (operations issued, new value)

    def read(self) -> int:
        return self.inner.read()

    def raise_to(self, value: int) -> int:
        self.raises.append((len(self.storage.ops), value))
        return self.inner.raise_to(value)


def test_floor_raised_before_the_new_slot_is_proven_is_refused(tmp_path: Path, keys: Keys, history: History) -> None:
    """The floor rises only after the new slot's GOOD mark is durable, and never above the fallback's GOOD."""
    counts.add("signing.attacks")
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    store.good_provider = SlotStates(storage).good_generations
    floor_file = tmp_path / "floor.json"
    FileFloor(floor_file).raise_to(0)  # provisioned (node-init, the image): a missing floor fails closed
    checked = 0
    for step in (1, 2, 3):  # each commit, then a boot that proves it: A 1, B 2, A 3
        store.commit(history.sources(step), [keys.signer])
        before_boot = storage.image()
        storage.ops.clear()
        watched = WatchedFloor(floor_file, storage)
        outcome, _ = run_supervisor(storage, make_config(), keys.trust, floor=watched)
        assert outcome.serving is not None and outcome.serving["generation"] == step
        for issued, value in watched.raises:  # a power cut right when the floor rises:
            ops = storage.ops[:issued]
            image = build(before_boot, ops, CrashState("durable", issued, frozenset(optional_ops(ops, issued))))
            states = SlotStates(RecordingStorage(image)).read_all()
            proven = {slot: r.state.good_generation for slot, r in states.items()}
            assert proven[outcome.serving["slot"]] == step, "the floor rose before the new GOOD mark was durable"
            assert None not in proven.values() and value <= min(g for g in proven.values() if g is not None)
            checked += 1
    assert checked == 2  # the floor rose twice: to 1 (after B's first GOOD) and to 2 (after A's second)
    assert FileFloor(floor_file).read() == 2  # min(GOOD A 3, GOOD B 2): falling back to B stays possible


def test_fast_forward_by_a_planted_huge_generation_does_not_block_commits(victim: Victim) -> None:
    """An unverified file named with generation 2^63-1 neither boots nor moves the generation counter."""
    for name in ("09223372036854775807.commit.json", "99999999999999999999.commit.json"):
        (victim.root / "B" / "checkpoints" / name).write_bytes(b"{}")
    victim.assert_boots_honest(3)
    result, _ = victim.store.commit(victim.history.sources(4), [victim.signer])
    assert result.generation == 4
    victim.assert_boots_honest(4)


def test_fast_forward_by_a_stolen_key_is_undone_by_revoking_it(victim: Victim) -> None:
    """A checkpoint at the maximum generation signed with a stolen (trusted) key boots until revoked."""
    stolen = SigningKey.generate()
    victim.store.save_trust(victim.store.trust.with_key(stolen.public))
    plant(victim, newer(victim.manifest(3), MAX_GENERATION), [stolen])
    assert victim.boot().generation == MAX_GENERATION  # validly signed: nothing short of revocation refuses it
    victim.store.save_trust(victim.store.trust.revoke(stolen.keyid))
    victim.reopen()
    victim.assert_boots_honest(3)
    result, _ = victim.store.commit(victim.history.sources(4), [victim.signer])
    assert result.generation == 4
    victim.assert_boots_honest(4)


# --- mix-and-match ------------------------------------------------------------------------


def test_mix_and_match_bundle_swapped_between_generations_is_refused(victim: Victim) -> None:
    """Generation 1's bundle under generation 3's record: the record binds the bundle's SHA-256."""
    (victim.root / layout.bundle_path("A", 3)).write_bytes((victim.root / layout.bundle_path("A", 1)).read_bytes())
    victim.assert_boots_honest(2)
    assert _failures(victim)[("A", 3)] is ManifestError


def test_mix_and_match_record_moved_to_the_other_slot_is_refused(victim: Victim) -> None:
    """Slot A's record and bundle copied into slot B (without frames) never boot from B."""
    for path in (layout.bundle_path("A", 3), layout.record_path("A", 3)):
        target = victim.root / path.replace("A/", "B/", 1)
        target.write_bytes((victim.root / path).read_bytes())
    outcome = victim.boot()
    assert (outcome.generation, outcome.slot) == (3, "A")
    assert _failures(victim)[("B", 3)] is ManifestError


def test_mix_and_match_frame_from_another_checkpoint_is_refused(victim: Victim) -> None:
    """A frame file replaced by another checkpoint's frame of the same size fails its SHA-256."""
    m3, m1 = victim.manifest(3), victim.manifest(1)
    only3 = [f for f in m3.frame_index().values() if f.digest not in m1.frame_index()]
    donor = next(iter(m1.frame_index().values()))
    (victim.root / layout.frame_path("A", only3[0].digest)).write_bytes(
        (victim.root / layout.frame_path("A", donor.digest)).read_bytes()
    )
    victim.assert_boots_honest(2)


def test_mix_and_match_delta_on_a_base_that_is_not_its_parent_is_refused(victim: Victim) -> None:
    """A delta's base swapped for an older version of that frame fails; a forged base link too."""
    m3 = victim.manifest(3)
    delta = next(f for f in m3.all_frames() if f.base is not None)
    assert delta.base is not None
    older = next(f for f in victim.manifest(1).all_frames() if f.size != 0 and f.digest != delta.base)
    predicate = m3.to_dict()
    for tensor in predicate["tensors"]:
        for frame in tensor["frames"]:
            if frame["digest"] == delta.digest.hex:
                frame["base"] = older.digest.hex  # a base outside the manifest's chain
    predicate["generation"] = 4
    plant_predicate(victim, predicate, [victim.signer])
    victim.assert_boots_honest(3)
    assert _failures(victim)[("A", 4)] is ManifestError
    base_file = victim.root / layout.frame_path("A", delta.base)
    base_file.write_bytes((victim.root / layout.frame_path("A", older.digest)).read_bytes())
    victim.assert_boots_honest(2)


# --- endless data, extraneous files, wrong model -----------------------------------------


def test_endless_bundle_is_refused_before_it_is_read(victim: Victim) -> None:
    """A 65 MiB (sparse) bundle is refused from its size alone, like an endless download."""
    slot, gen = plant(victim, newer(victim.manifest(3), 4), [victim.signer])
    with open(victim.root / layout.bundle_path(slot, gen), "r+b") as f:
        f.truncate(65 * 1024 * 1024)
    victim.assert_boots_honest(3)


def test_endless_commit_record_and_frame_are_refused(victim: Victim) -> None:
    """A record past its 64 KiB cap and a frame longer than its manifest says are both refused."""
    record = victim.root / layout.record_path("A", 3)
    record.write_bytes(record.read_bytes() + b" " * 70_000)
    victim.assert_boots_honest(2)
    frame = next(iter(victim.manifest(2).frame_index().values()))
    with open(victim.root / layout.frame_path("B", frame.digest), "ab") as f:
        f.write(os.urandom(1 << 20))
    victim.assert_boots_honest(1)


def test_endless_manifest_fields_beyond_the_caps_are_refused(victim: Victim) -> None:
    """A trusted-signed manifest claiming a 2^40-byte frame or 2^31 dims is refused at parse."""
    for edit in ("raw_size", "shape"):
        predicate = victim.manifest(3).to_dict()
        predicate["generation"] = 4
        if edit == "raw_size":
            predicate["tensors"][0]["frames"][0]["raw_size"] = 1 << 40
        else:
            predicate["tensors"][0]["shape"] = [2**31] * 40
        bundle = sign_predicate(predicate, [victim.signer])
        with pytest.raises((ManifestError, LimitExceededError)):
            verify_bundle(bundle, victim.store.trust)
        plant_predicate(victim, predicate, [victim.signer])
        victim.assert_boots_honest(3)


def test_extraneous_files_are_ignored_by_boot_and_collected(victim: Victim) -> None:
    """Planted extra files and directories never load, never break a commit, and GC removes them."""
    junk = {
        "A/checkpoints/notes.txt": b"x",
        "A/checkpoints/00000000000000000009.manifest.json": b"{}",
        f"A/frames/{'ab' * 32}": b"stray frame",
        "A/frames/model.pt": b"\x80\x04junk",
        "B/extra.bin": b"y",
    }
    for path, data in junk.items():
        (victim.root / path).write_bytes(data)
    (victim.root / "A/frames/subdir").mkdir()
    victim.assert_boots_honest(3)
    assert victim.store.verify().all_ok
    result, _ = victim.store.commit(victim.history.sources(4), [victim.signer])
    victim.store.gc()
    victim.assert_boots_honest(result.generation)
    left = [p for p in junk if p.startswith("A/") and (victim.root / p).exists()]
    assert not left, f"GC left extraneous files: {left}"


def test_wrong_model_checkpoint_is_refused(victim: Victim) -> None:
    """A validly signed checkpoint for another model id never boots here (compatibility)."""
    plant(victim, newer(victim.manifest(3), 4, model="some-other-model"), [victim.signer])
    victim.assert_boots_honest(3)
    assert _failures(victim)[("A", 4)] is CompatibilityError


# --- keys ---------------------------------------------------------------------------------


def test_checkpoint_signed_by_a_revoked_key_is_refused(victim: Victim) -> None:
    """After revocation, checkpoints signed only by that key stop booting, and it cannot commit."""
    second = SigningKey.generate()
    victim.store.save_trust(victim.store.trust.with_key(second.public))
    victim.store.commit(victim.history.sources(4), [second])
    victim.assert_boots_honest(4)
    victim.store.save_trust(victim.store.trust.revoke(second.keyid))
    victim.reopen()
    victim.assert_boots_honest(3)
    assert _failures(victim)[("B", 4)] is RevokedKeyError
    with pytest.raises(RevokedKeyError):
        victim.store.commit(victim.history.sources(5), [second])


def test_key_rotation_keeps_the_node_bootable(victim: Victim) -> None:
    """Add the new key, dual-sign, switch, revoke the old: the node always has a bootable checkpoint."""
    new = SigningKey.generate()
    victim.store.save_trust(victim.store.trust.with_key(new.public))
    victim.store.commit(victim.history.sources(4), [victim.signer, new])  # dual-signed bridge
    victim.store.commit(victim.history.sources(5), [new])
    victim.store.save_trust(victim.store.trust.revoke(victim.signer.keyid))
    victim.reopen()
    victim.assert_boots_honest(5)
    (victim.root / layout.record_path("A", 5)).unlink()  # newest lost: the bridge still boots
    victim.assert_boots_honest(4)
    (victim.root / layout.record_path("B", 4)).unlink()  # old-key-only checkpoints are refused
    with pytest.raises(NoValidCheckpointError):
        api.load(victim.store)


def test_fewer_signatures_than_the_threshold_are_refused(victim: Victim) -> None:
    """With a 2-of-2 trust store, a checkpoint signed by one trusted key never boots."""
    second = SigningKey.generate()
    two = TrustStore(victim.store.trust.with_key(second.public).keys, threshold=2)
    store = Store(victim.store.storage, victim.store.config, two)
    with pytest.raises(NoValidCheckpointError):
        api.load(store)
    plant(victim, newer(victim.manifest(3), 4), [victim.signer, second])
    assert api.load(store).generation == 4
