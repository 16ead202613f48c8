"""``appliance channel follow --watch`` as the supervisord ``channel`` program (real supervisord, real S3).

The section is rendered only for a node whose remote.json names a channel (``channel_section``);
under supervisord it follows a publish: the release is imported into the inactive slot without
any command on the node, and ``appliance boot`` then serves it through the canary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import CLI, LocalNode
from appliance.cli.main import main
from appliance.remote.supervisord import ChannelProgram, channel_section
from appliance.store.store import Store
from tests.integration.s3server import S3Server, remote_json
from tests.integration.test_channel import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path, server: S3Server) -> Iterator[Fleet]:
    f = Fleet(tmp_path, server)
    try:
        yield f
    finally:
        for n in f.nodes:
            n.stop()


def _node(fleet: Fleet, name: str, *, channel: bool = True) -> tuple[LocalNode, str]:
    node = LocalNode.create(fleet.tmp / name)
    node.seed()
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


def test_channel_program_follows_a_publish_and_imports_under_supervisord(fleet: Fleet) -> None:
    node, section = _node(fleet, "node-a")
    assert section.startswith("[program:channel]")
    assert node.control().info("channel").state == "RUNNING"
    assert fleet.publish(fleet.release(node, 1000))[0] == 0
    restored = node.wait_event("remote.restored", timeout=90)
    assert restored["fields"]["generation"] == 1000 and restored["fields"]["imported"] is True
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
