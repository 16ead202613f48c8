"""Attacks by the holder of a stolen device key, and release keys used out of role (issue 10, item 6).

Trust store of the victim: a release key ``R`` that may sign model ``m`` and a device key ``D``
bound to device ``dev-1``. A device key may sign only checkpoints that descend from an
R-signed checkpoint of ``m`` with the same tensor names, dtypes and shapes; each test tries
one way around that rule, through the real commit path where the rule is checked up front and
by signing a forged manifest directly (what a thief with the key file would do), and checks
that discovery (boot), restore and verify refuse it with the typed error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from appliance.cli.main import main
from appliance.errors import LineageError, NoValidCheckpointError, RoleError
from appliance.format.lineage import Lineage
from appliance.format.manifest import Manifest, TensorEntry
from appliance.signing import SigningKey, TrustStore, sign_manifest, verify_bundle
from appliance.signing.trust import DEVICE, RELEASE
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.slot import SlotReader
from appliance.store.store import Store

pytestmark = pytest.mark.faults
MODEL = "m"
N = 8192


class Victim:
    def __init__(self, root: Path, *, release_models: tuple[str, ...] = (MODEL,)) -> None:
        self.release, self.device, self.other_device = (
            SigningKey.generate(),
            SigningKey.generate(),
            SigningKey.generate(),
        )
        self.store = Store.init(root, [self.release.public], StoreConfig(model=MODEL, frame_size=4096))
        trust = TrustStore().with_key(self.release.public, "vendor", role=RELEASE, models=release_models)
        trust = trust.with_key(self.device.public, "this node", role=DEVICE, device="dev-1")
        trust = trust.with_key(self.other_device.public, "another node", role=DEVICE, device="dev-2")
        self.store.save_trust(trust)
        self.store = Store.open(root)

    def commit(self, key: SigningKey, seed: int, *, extra: bool = False) -> int:
        sources = [_source("w", seed), _source("b", seed + 100)]
        if extra:
            sources.append(_source("injected", seed + 200))
        result, _ = self.store.commit(sources, [key])
        return result.generation

    def bundle(self, generation: int) -> bytes:
        opened = self.store.select(generation)
        return SlotReader(self.store.storage, opened.opened.slot).read_bundle(opened.opened.record)

    def manifest(self, generation: int) -> Manifest:
        return self.store.select(generation).opened.verified.manifest


def _source(name: str, seed: int) -> TensorSource:
    data = np.random.default_rng(seed).integers(0, 256, N, dtype=np.uint8)
    return TensorSource(name, "uint8", (N,), lambda: data)


@pytest.fixture
def victim(tmp_path: Path) -> Victim:
    return Victim(tmp_path / "store")


def _trust_role_less(victim: Victim) -> None:
    """What a v1 store looked like: every key unrestricted."""
    trust = TrustStore().with_key(victim.release.public).with_key(victim.device.public)
    victim.store.save_trust(trust)


def _restore_roles(victim: Victim) -> None:
    root = Path(str(getattr(victim.store.storage, "root", "")))
    trust = TrustStore().with_key(victim.release.public, role=RELEASE, models=(MODEL,))
    trust = trust.with_key(victim.device.public, role=DEVICE, device="dev-1")
    victim.store.save_trust(trust)
    victim.store = Store.open(root)


# --- the guarantee, then each attack ----------------------------------------------------


def test_device_key_signs_descendants_of_a_release(victim: Victim) -> None:
    """The legitimate path: release seed, then device-signed adaptations carrying the lineage."""
    victim.commit(victim.release, 1)
    g2 = victim.commit(victim.device, 2)
    g3 = victim.commit(victim.device, 3)
    for gen in (g2, g3):
        opened = victim.store.select(gen).opened
        assert opened.authorization.role == "device" and opened.authorization.device == "dev-1"
        assert opened.authorization.release_base.generation == 1
        assert opened.verified.manifest.version == 2 and opened.verified.manifest.lineage is not None
    assert victim.store.select(1).opened.authorization.role == "release"
    log = {e["generation"]: e for e in victim.store.log()}
    assert (log[3]["signer_role"], log[3]["release_base"]["generation"]) == ("device", 1)
    assert log[1]["signer_role"] == "release"
    status = victim.store.status()["newest_valid"]
    assert (status["generation"], status["signer_role"], status["release_base"]["generation"]) == (3, "device", 1)


def test_lineage_survives_the_release_base_being_collected(victim: Victim) -> None:
    victim.commit(victim.release, 1)
    for seed in range(2, 7):
        victim.commit(victim.device, seed)
    assert 1 not in {e["generation"] for e in victim.store.log()}  # keep=2 per slot: the base is gone
    opened = victim.store.select().opened
    assert opened.generation == 6 and opened.authorization.release_base.generation == 1


def test_device_key_cannot_sign_a_checkpoint_without_release_lineage(
    victim: Victim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A thief with the device key signs weights of its own; boot, restore and verify refuse them."""
    with pytest.raises(LineageError, match="none"):  # the commit path refuses up front
        victim.commit(victim.device, 1)
    assert victim.store.log() == []
    victim.commit(victim.release, 1)
    # The thief's checkpoint: signed with D while the store still trusted D without a role.
    _trust_role_less(victim)
    forged = victim.commit(victim.device, 666)
    _restore_roles(victim)
    with pytest.raises(NoValidCheckpointError, match="LineageError: device-signed checkpoint .* carries no lineage"):
        victim.store.select(forged)
    selection = victim.store.select()  # boot's discovery: the forged one is refused, the release boots
    assert selection.opened.generation == 1
    assert [type(f.error) for f in selection.failures] == [LineageError]
    report = {c.generation: c for c in victim.store.verify().checkpoints}
    assert report[forged].error_class == "LineageError" and report[1].ok
    root = str(getattr(victim.store.storage, "root", ""))
    out = tmp_path / "out.safetensors"
    assert main(["restore", root, "--generation", str(forged), "--out", str(out)]) == 50
    assert "LineageError" in capsys.readouterr().err and not out.exists()


def test_device_key_cannot_sign_a_forged_manifest_without_lineage(victim: Victim) -> None:
    victim.commit(victim.release, 1)
    forged = dataclasses.replace(victim.manifest(1), generation=2, parent=victim.manifest(1).digest())
    with pytest.raises(LineageError, match="carries no lineage"):
        verify_bundle(sign_manifest(forged, [victim.device]), victim.store.trust, expected_model=MODEL)


def test_device_key_cannot_change_the_release_tensor_layout(victim: Victim) -> None:
    victim.commit(victim.release, 1)
    with pytest.raises(LineageError, match="tensor layout"):
        victim.commit(victim.device, 2, extra=True)  # an injected tensor: refused before it is signed
    assert [e["generation"] for e in victim.store.log()] == [1]
    base = victim.manifest(1)
    lineage = Lineage(victim.bundle(1), "dev-1")
    for change in ("shape", "dtype", "rename"):
        t = base.tensors[0]
        if change == "shape":
            t = TensorEntry(t.name, t.dtype, (N // 2, 2), t.frames)
        elif change == "dtype":
            t = TensorEntry(t.name, "int8", t.shape, t.frames)
        else:
            t = TensorEntry("w2", t.dtype, t.shape, t.frames)
        forged = dataclasses.replace(
            base, generation=2, parent=base.digest(), tensors=(t, *base.tensors[1:]), lineage=lineage
        )
        with pytest.raises(LineageError, match="tensor layout"):
            verify_bundle(sign_manifest(forged, [victim.device]), victim.store.trust, expected_model=MODEL)


def test_device_key_cannot_sign_for_another_device(victim: Victim) -> None:
    victim.commit(victim.release, 1)
    base = victim.manifest(1)
    forged = dataclasses.replace(base, generation=2, parent=base.digest(), lineage=Lineage(victim.bundle(1), "dev-2"))
    with pytest.raises(LineageError, match="bound to"):
        verify_bundle(sign_manifest(forged, [victim.device]), victim.store.trust, expected_model=MODEL)


def test_device_key_cannot_forge_its_own_release_base(victim: Victim) -> None:
    """The embedded base must verify with a release key: a device-signed 'release' is refused."""
    victim.commit(victim.release, 1)
    base = victim.manifest(1)
    fake_base = sign_manifest(dataclasses.replace(base, generation=1), [victim.device])
    forged = dataclasses.replace(base, generation=2, parent=base.digest(), lineage=Lineage(fake_base, "dev-1"))
    with pytest.raises(LineageError, match="device key, not a release key"):
        verify_bundle(sign_manifest(forged, [victim.device]), victim.store.trust, expected_model=MODEL)
    unsigned = dataclasses.replace(base, generation=2, parent=base.digest(), lineage=Lineage(b"{}", "dev-1"))
    with pytest.raises(LineageError, match="does not verify"):
        verify_bundle(sign_manifest(unsigned, [victim.device]), victim.store.trust, expected_model=MODEL)


def test_release_key_cannot_sign_another_models_checkpoint(tmp_path: Path) -> None:
    victim = Victim(tmp_path / "store", release_models=("another-model",))
    with pytest.raises(RoleError, match="another-model"):
        victim.commit(victim.release, 1)
    assert victim.store.log() == []
    _trust_role_less(victim)  # signed while the key was unrestricted, then its role was set
    victim.commit(victim.release, 1)
    trust = TrustStore().with_key(victim.release.public, role=RELEASE, models=("another-model",))
    victim.store.save_trust(trust)
    victim.store = Store.open(Path(str(getattr(victim.store.storage, "root", ""))))
    with pytest.raises(NoValidCheckpointError, match="RoleError"):
        victim.store.select()


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"type": "rsa-4096"}, "key type"),
        ({"role": "admin"}, "role must be one of"),
        ({"role": "release"}, "lists the model ids"),
        ({"role": "device"}, "exactly one device id"),
        ({"role": "device", "device": "d", "models": ["m"]}, "exactly one device id"),
        ({"models": ["m"]}, "without a role"),
        ({"role": "release", "models": ["m\x1b[2J"]}, "printable"),
    ],
)
def test_malformed_v2_trust_entries_are_refused(entry: dict[str, object], needle: str) -> None:
    from appliance.errors import TrustStoreError

    key = SigningKey.generate()
    good = TrustStore().with_key(key.public, role=RELEASE, models=(MODEL,)).to_dict()
    good["keys"][0] = {k: v for k, v in good["keys"][0].items() if k not in ("role", "models")} | entry
    with pytest.raises(TrustStoreError, match=needle):
        TrustStore.from_dict(good)


def test_role_less_trust_store_keeps_working_and_keeps_its_bytes(tmp_path: Path) -> None:
    """Existing stores: a v1 trust store is unrestricted, read and written unchanged (migration: docs)."""
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model=MODEL, frame_size=4096))
    before = (tmp_path / "s" / "trust.json").read_bytes()
    assert json.loads(before)["version"] == 1
    store.commit([_source("w", 1)], [key])
    opened = store.select().opened
    assert opened.authorization.role == "unrestricted" and opened.verified.manifest.lineage is None
    store.save_trust(store.trust)
    assert (tmp_path / "s" / "trust.json").read_bytes() == before
    root = str(tmp_path / "s")
    assert main(["trust", root, "role", key.keyid[:16], "--role", "release", "--model", MODEL]) == 0
    migrated = json.loads((tmp_path / "s" / "trust.json").read_text())
    assert migrated["version"] == 2 and migrated["keys"][0]["role"] == "release"
    assert migrated["keys"][0]["type"] == "ed25519"
    assert Store.open(root).select().opened.authorization.role == "release"
