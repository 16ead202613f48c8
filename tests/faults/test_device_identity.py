"""The node knows its own device id: another device's valid key cannot sign for it (issue 10, item 6 gap).

A fleet's shared trust file lists the device keys of several devices (``dev-1`` = this node,
``dev-2`` = another). Attack: the holder of dev-2's key (a stolen or simply another node's key)
signs a checkpoint with a perfect release lineage naming dev-2 and plants it on dev-1 (a stick,
a bucket, the disk). Before this change dev-1 accepted it: the key was trusted and the lineage
valid. Now the node scopes its trust store to its own id and refuses it, typed
(``ForeignDeviceKeyError``, 77); boot serves the older release instead. A node that does not know
its id while the trust store names several devices refuses to guess (``DeviceIdentityError``, 78).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import DeviceIdentityError, ForeignDeviceKeyError, NoValidCheckpointError
from appliance.node.config import NodeConfig, load_config
from appliance.node.identity import open_node_store
from appliance.signing import verify_bundle
from appliance.store.store import Store
from tests.faults.test_key_roles import MODEL, Victim

pytestmark = pytest.mark.faults


@pytest.fixture
def victim(tmp_path: Path) -> Victim:
    return Victim(tmp_path / "store")


def _planted_by_another_device(victim: Victim) -> int:
    """Release seed, then a checkpoint signed by dev-2's key with a valid lineage naming dev-2."""
    victim.commit(victim.release, 1)
    return victim.commit(victim.other_device, 2)  # the library does not know which device it runs on


def test_another_devices_valid_key_is_refused_on_this_node(victim: Victim) -> None:
    planted = _planted_by_another_device(victim)
    root = Path(str(getattr(victim.store.storage, "root", "")))
    assert victim.store.select(planted).opened.authorization.device == "dev-2"  # valid, as dev-2 sees it
    node = Store.open(root, device_id="dev-1")
    with pytest.raises(NoValidCheckpointError, match="ForeignDeviceKeyError"):
        node.select(planted)
    selection = node.select()  # boot's discovery: the planted one is refused, the release boots
    assert selection.opened.generation == 1
    assert [type(f.error) for f in selection.failures] == [ForeignDeviceKeyError]
    with pytest.raises(ForeignDeviceKeyError, match="dev-2") as caught:
        verify_bundle(victim.bundle(planted), node.trust, expected_model=MODEL)
    assert caught.value.exit_code == 77
    report = {c.generation: c for c in node.verify().checkpoints}
    assert report[planted].error_class == "ForeignDeviceKeyError" and report[1].ok


def test_this_devices_own_key_still_signs_on_this_node(victim: Victim) -> None:
    victim.commit(victim.release, 1)
    root = Path(str(getattr(victim.store.storage, "root", "")))
    victim.store = Store.open(root, device_id="dev-1")
    own = victim.commit(victim.device, 2)
    assert victim.store.select(own).opened.authorization.device == "dev-1"
    with pytest.raises(ForeignDeviceKeyError):  # the commit path refuses up front what boot would refuse
        victim.commit(victim.other_device, 3)
    assert [e["generation"] for e in victim.store.log()] == [2, 1]


def _node(tmp_path: Path, victim: Victim, **fields: object) -> Path:
    root = Path(str(getattr(victim.store.storage, "root", "")))
    config = NodeConfig(store=str(root), run_dir=str(tmp_path / "run"), outbox=str(tmp_path / "outbox"),
                        event_log=str(tmp_path / "events.jsonl"), floor_file=str(tmp_path / "floor.json"),
                        signing_key=str(tmp_path / "device.key"), **fields)  # type: ignore[arg-type]  # fmt: skip
    path = tmp_path / "etc" / "node.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(config.to_bytes())
    return path


def test_node_learns_its_id_from_first_boots_device_json(victim: Victim, tmp_path: Path) -> None:
    planted = _planted_by_another_device(victim)
    path = _node(tmp_path, victim)
    identity = {"format": "appliance.device", "version": 1, "device_id": "dev-1", "keyid": "k", "role": "device",
                "key_provider": "file", "created": "2026-12-04T18:00:00Z"}  # fmt: skip
    (path.parent / "device.json").write_text(json.dumps(identity))
    config = load_config(path)
    assert config.device_id == "dev-1"
    assert open_node_store(config).select().opened.generation == 1 != planted


def test_node_with_several_devices_in_its_trust_store_and_no_id_refuses_to_guess(
    victim: Victim, tmp_path: Path
) -> None:
    _planted_by_another_device(victim)
    config = load_config(_node(tmp_path, victim))
    assert config.device_id == ""
    with pytest.raises(DeviceIdentityError, match="does not know which one") as caught:
        open_node_store(config)
    assert caught.value.exit_code == 78
    explicit = load_config(_node(tmp_path, victim, device_id="dev-1"))
    assert open_node_store(explicit).trust.device == "dev-1"


def test_damaged_device_identity_is_a_typed_error(victim: Victim, tmp_path: Path) -> None:
    path = _node(tmp_path, victim)
    (path.parent / "device.json").write_text('{"format": "appliance.device", "version": 1, "device_id": "../x"}')
    with pytest.raises(DeviceIdentityError, match="device id cannot be read"):
        load_config(path)
    with pytest.raises(DeviceIdentityError):
        load_config(_node(tmp_path, victim, device_id="bad id with spaces"))
