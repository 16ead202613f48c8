"""``appliance channel follow --watch`` as the supervisord ``channel`` program (real supervisord, real S3).

The section is rendered only for a node whose remote.json names a channel (``channel_section``);
under supervisord it follows a publish: the release is imported into the inactive slot without
any command on the node, and ``appliance boot`` then serves it through the canary. With node.json
``channel_inbox`` (production) the program only stages the release and the persistence watchdog,
the store's only writer, imports it (docs/design.md §11.6); the same test runs both ways.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from appliance.cli.localnode import CLI, LocalNode
from appliance.cli.main import main
from appliance.remote.supervisord import ChannelProgram, channel_section
from appliance.store.store import Store
from tests.integration import test_channel
from tests.integration.s3server import remote_json
from tests.integration.test_channel import Fleet

pytestmark = pytest.mark.integration
fleet = test_channel.fleet  # the shared fixture (stops every node it started)


def split(node: LocalNode) -> LocalNode:
    """The node with a channel inbox in node.json, as production (here one user plays both sides)."""
    config = dataclasses.replace(node.config, channel_inbox=str(node.root / "channel-inbox"))
    node.config_path.write_bytes(config.to_bytes())
    return LocalNode(node.root)


def _node(fleet: Fleet, name: str, *, channel: bool = True, inbox: bool = False) -> tuple[LocalNode, str]:
    node = LocalNode.create(fleet.tmp / name)
    node.seed()
    if inbox:
        node = split(node)
    fleet.model = Store.open(node.root / "store").config.model
    assert main(["trust", str(node.root / "store"), "add", str(fleet.tmp / "release.key.pub"), "--role", "release",
                 "--model", fleet.model, "--json"]) == 0  # fmt: skip
    if channel:
        fleet.remote_json(node.root, name, poll_interval=0.3)
    else:
        remote_json(node.root / "remote.json", fleet.server, name, restore_at_boot=False)
    program = ChannelProgram(appliance=" ".join(CLI), config=str(node.config_path), remote=str(node.root / "remote.json"),
                             log_dir=str(node.root / "log"), state_dir=str(node.root / "channel-state"), user="")  # fmt: skip
    section = channel_section(program)
    conf = node.config_path.parent / "supervisord.conf"
    conf.write_text(conf.read_text() + "\n" + section)
    fleet.nodes.append(node)
    node.start()
    code, out = node.boot()
    assert code == 0 and out["serving"]["generation"] == 1, out
    return node, section


@pytest.mark.parametrize("inbox", [False, True], ids=["direct", "staged"])
def test_channel_program_follows_a_publish_and_imports_under_supervisord(fleet: Fleet, inbox: bool) -> None:
    node, section = _node(fleet, "node-a", inbox=inbox)
    assert section.startswith("[program:channel]")
    assert node.control().info("channel").state == "RUNNING"
    assert fleet.publish(fleet.release(node, 1000))[0] == 0
    restored = node.wait_event("remote.restored", timeout=90)
    assert restored["fields"]["generation"] == 1000 and restored["fields"]["imported"] is True
    # staged: the channel program handed the release off; the store's writer (persist) imported it
    assert restored["component"] == ("persist" if inbox else "channel")
    if inbox:
        staged = node.events("channel.staged")
        assert len(staged) == 1 and staged[0]["component"] == "channel" and staged[0]["fields"]["generation"] == 1000
        head = node.root / "channel-inbox" / "head.json"
        node.wait_for("the channel program to empty its inbox", lambda: not head.exists(), timeout=30)
    assert (node.root / "channel-state" / "heads-seen.json").exists()  # its own state directory
    code, out = node.boot()
    assert code == 0 and out["serving"]["generation"] == 1000, out
    time.sleep(1.0)  # more polls: nothing new, nothing imported twice
    assert len(node.events("remote.restored")) == 1
    assert node.control().info("channel").state == "RUNNING"


def test_a_node_without_a_channel_gets_no_channel_program(fleet: Fleet) -> None:
    node, section = _node(fleet, "node-b", channel=False)
    assert section == ""
    assert "[program:channel]" not in (node.root / "supervisord.conf").read_text()
    code, out = node.cli_json("channel", "follow", "--if-configured", "--remote", str(node.root / "remote.json"))
    assert code == 0 and out == {"channel": None, "imported": False}
