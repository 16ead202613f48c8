"""The fleet channel: a release moves to two nodes on one machine (real supervisord, real S3 server).

The operator's release store signs with a release key; `appliance publish` puts it on a channel;
each node's `appliance channel follow` imports it into the inactive slot (only blobs it lacks are
downloaded) and `appliance boot` serves it through the canary. A release whose canary fails is
marked BAD and the node falls back to what it served; replayed heads and device-signed releases
are refused. A channel trusts only the node's trust-store keys with the release role for its model
(key roles, issue 10); ``channel_trust`` in remote.json is a legacy pin (docs/design.md §11.6).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import api
from appliance.cli.localnode import LocalNode
from appliance.cli.main import main
from appliance.errors import ChannelRoleError, HeadError
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.integration.s3server import S3Server, remote_json

pytestmark = pytest.mark.integration


class Fleet:
    def __init__(self, tmp: Path, server: S3Server) -> None:
        self.tmp, self.server = tmp, server
        self.release_key = SigningKey.generate()
        self.release_key.save(tmp / "release.key")
        self.nodes: list[LocalNode] = []
        self.model = ""

    def remote_json(self, where: Path, device: str, **fields: Any) -> Path:
        return remote_json(where / "remote.json", self.server, device, channel="stable",
                           state_dir=str(where / "replicate-state"), restore_at_boot=False, **fields)  # fmt: skip

    def node(self, name: str) -> LocalNode:
        node = LocalNode.create(self.tmp / name)
        node.seed()
        self.model = Store.open(node.root / "store").config.model
        code = main(["trust", str(node.root / "store"), "add", str(self.tmp / "release.key.pub"), "--role", "release",
                     "--model", self.model, "--json"])  # fmt: skip
        assert code == 0
        self.remote_json(node.root, name)
        self.nodes.append(node)  # before it starts: the fixture's finalizer stops it even if the boot fails
        node.start()
        code, out = node.boot()
        assert code == 0 and out["serving"]["generation"] == 1, out
        return node

    def release(self, source: LocalNode, generation_floor: int, meta: Callable[[dict[str, Any]], None] | None = None,
                key: SigningKey | None = None) -> Path:  # fmt: skip
        """A release store holding the source node's state, committed at or above ``generation_floor``."""
        loaded = api.load(Store.open(source.root / "store"))
        root = self.tmp / "release"
        if not root.exists():
            model = Store.open(source.root / "store").config.model
            store = Store.init(root, [self.release_key.public], StoreConfig(model=model, frame_size=4 * 1024 * 1024))
            store.save_trust(store.trust.with_role(self.release_key.keyid, "release", models=(model,)))
        store = Store.open(root)
        metadata = dict(loaded.metadata)
        if meta:
            meta(metadata)
        signer = key or self.release_key
        if key is not None:
            store.save_trust(store.trust.with_key(key.public))
        api.save(store, loaded.tensors, signer, metadata, floor=generation_floor)
        return root

    def publish(self, root: Path, key: Path | None = None) -> tuple[int, Any]:
        remote = self.remote_json(self.tmp, "operator")
        argv = ["publish", str(root), "--remote", str(remote), "--channel", "stable",
                "--key", str(key or self.tmp / "release.key"), "--json"]  # fmt: skip
        return main(argv), None


@pytest.fixture
def fleet(tmp_path: Path, server: S3Server) -> Iterator[Fleet]:
    f = Fleet(tmp_path, server)
    try:
        yield f
    finally:
        for n in f.nodes:
            n.stop()


def _follow(node: LocalNode) -> tuple[int, dict[str, Any]]:
    return node.cli_json("channel", "follow", "--remote", str(node.root / "remote.json"))


def test_a_release_moves_to_two_nodes_through_the_canary(fleet: Fleet) -> None:
    a, b = fleet.node("node-a"), fleet.node("node-b")
    assert fleet.publish(fleet.release(a, 1000))[0] == 0
    for node in (a, b):
        code, pulled = _follow(node)
        assert code == 0 and pulled["imported"] and pulled["generation"] == 1000, pulled
        # the release has the same weights as the node's own checkpoint: nothing but the bundle crosses the network
        assert pulled["from_source"] == 0 and pulled["from_other_slot"] + pulled["kept"] == pulled["blobs"]
        code, out = node.boot()
        assert code == 0 and out["serving"]["generation"] == 1000, out
        assert node.events("canary.passed")[-1]["fields"]["generation"] == 1000
        assert _follow(node)[1]["imported"] is False  # polling again: nothing new


def test_a_release_that_fails_its_canary_falls_back_and_reports(fleet: Fleet) -> None:
    a = fleet.node("node-a")

    def wrong(meta: dict[str, Any]) -> None:
        meta["canary"]["expected"][0][0] += 1.0

    assert fleet.publish(fleet.release(a, 1000, meta=wrong))[0] == 0
    assert _follow(a)[1]["imported"]
    code, out = a.boot()
    assert out["serving"]["generation"] == 1  # fell back to what it served
    assert a.events("canary.failed")[-1]["fields"]["generation"] == 1000
    assert any(e["fields"].get("generation") == 1000 for e in a.events("slot.marked_bad"))


def test_replayed_channel_head_and_device_signed_release_are_refused(fleet: Fleet, server: S3Server) -> None:
    a = fleet.node("node-a")
    head = server.bucket_dir() / "appliance" / "channels" / "stable" / "head.json"
    fleet.publish(fleet.release(a, 1000))
    old = head.read_bytes()
    fleet.publish(fleet.release(a, 2000))
    assert _follow(a)[1]["generation"] == 2000
    head.write_bytes(old)  # the bucket attacker replays the generation-1000 head
    code, err = _follow(a)
    assert code == HeadError.exit_code and "replayed" in err["problem"]
    # a head re-signed by a key this node does not know is refused
    payload = json.loads(old)
    from appliance.format.remote import parse_head_payload
    from appliance.remote.head import sign_head

    record = parse_head_payload(base64.b64decode(payload["payload"]))
    head.write_bytes(sign_head(record, [SigningKey.generate()]))
    code, err = _follow(a)
    assert code == HeadError.exit_code


def test_a_checkpoint_not_signed_by_a_release_key_never_reaches_a_node(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.node("node-a")
    device = SigningKey.generate()
    device.save(tmp_path / "device.key")
    root = fleet.release(a, 1000, key=device)  # signed by a role-less key the node also trusts (a v1 key)
    main(["trust", str(a.root / "store"), "add", str(tmp_path / "device.key.pub"), "--json"])
    # the release store knows it without the release role: publishing with it is refused before any upload
    assert fleet.publish(root, key=tmp_path / "device.key")[0] == ChannelRoleError.exit_code
    assert not (fleet.server.bucket_dir() / "appliance" / "channels").exists()
    # and a head signed by a release key cannot carry a checkpoint signed by a role-less key either
    from appliance.remote.channel import follow
    from appliance.remote.config import load_remote
    from appliance.remote.replicate import upload_checkpoint
    from appliance.remote.s3 import ObjectStore
    from appliance.remote.state import StateDir

    remote = load_remote(a.root / "remote.json")
    objects = ObjectStore(remote, remote.channel_prefix())
    release_store = Store.open(root)
    upload_checkpoint(release_store, objects, release_store.select().opened, kind="channel", name="stable",
                      sequence=1, keys=[fleet.release_key])  # fmt: skip
    with pytest.raises(ChannelRoleError, match="not signed by a release key"):
        follow(Store.open(a.root / "store"), objects, channel="stable", state_dir=StateDir(remote.state_dir),
               floor=0)  # fmt: skip


def test_a_device_role_key_trying_to_publish_is_refused_typed(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.node("node-a")
    root = fleet.release(a, 1000)
    device = SigningKey.generate()
    device.save(tmp_path / "device.key")
    release = Store.open(root)
    release.save_trust(release.trust.with_key(device.public, role="device", device="node-a"))
    code = main(["publish", str(root), "--remote", str(fleet.remote_json(tmp_path, "operator")), "--channel",
                 "stable", "--key", str(tmp_path / "device.key"), "--json"])  # fmt: skip
    assert code == ChannelRoleError.exit_code == 71
    assert not (fleet.server.bucket_dir() / "appliance" / "channels").exists()  # refused before any upload


def test_a_channel_head_signed_by_a_device_role_key_is_refused_typed(fleet: Fleet, server: S3Server) -> None:
    a = fleet.node("node-a")
    device = SigningKey.generate()  # e.g. a node's own device key, registered in every node's trust store
    device.save(fleet.tmp / "device.key")
    assert main(["trust", str(a.root / "store"), "add", str(fleet.tmp / "device.key.pub"), "--role", "device",
                 "--device", "node-b", "--json"]) == 0  # fmt: skip
    fleet.publish(fleet.release(a, 1000))
    head = server.bucket_dir() / "appliance" / "channels" / "stable" / "head.json"
    from appliance.format.remote import parse_head_payload
    from appliance.remote.head import sign_head

    record = parse_head_payload(base64.b64decode(json.loads(head.read_bytes())["payload"]))
    head.write_bytes(sign_head(record, [device]))  # a device key re-signs the head (a compromised node)
    code, err = _follow(a)
    assert code == ChannelRoleError.exit_code and "device key" in err["problem"], err
    assert not any(e["fields"].get("generation") == 1000 for e in a.events("remote.restored"))


def test_channel_trust_migration_role_less_keys_are_refused_until_given_the_release_role(
    fleet: Fleet, tmp_path: Path
) -> None:
    a = fleet.node("node-a")
    keyid = fleet.release_key.keyid
    assert main(["trust", str(a.root / "store"), "role", keyid, "--role", "none", "--json"]) == 0  # a v1-era node
    fleet.publish(fleet.release(a, 1000))
    code, err = _follow(a)  # no release key of the model in the trust store: nothing is accepted
    assert code == ChannelRoleError.exit_code and "no release key" in err["problem"], err
    # an existing remote.json with channel_trust: still read, as a pin, but the key must be a release key
    fleet.remote_json(a.root, "node-a", channel_trust=[str(fleet.tmp / "release.key.pub")])
    code, err = _follow(a)
    assert code == ChannelRoleError.exit_code and "role unrestricted" in err["problem"], err
    assert f"role {keyid[:12]} --role release --model {fleet.model}" in err["remedy"]
    # the documented migration: give the key the release role; the pinned channel then follows
    assert main(["trust", str(a.root / "store"), "role", keyid, "--role", "release", "--model", fleet.model]) == 0
    code, pulled = _follow(a)
    assert code == 0 and pulled["imported"] and pulled["generation"] == 1000, pulled
