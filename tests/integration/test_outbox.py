"""The persistence watchdog's outbox handling, in process: what is committed, deferred or quarantined."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from appliance.events import EventLog, read_events
from appliance.models.demo import build
from appliance.node.config import NodeConfig
from appliance.node.rundir import RunDir
from appliance.persist.committer import Committer
from appliance.persist.daemon import PersistDaemon
from appliance.sources.export import open_export, write_export
from appliance.store.store import Store
from tests.integration.node_fixtures import digest_of, node, serving_good, with_changes

pytestmark = [pytest.mark.integration, pytest.mark.faults]
__all__ = ["node"]


class Vouched:
    """Fault-injection seam for ``Receipts``: stands in for the serving service's receipts (the control
    channel) so these tests can drive the outbox mechanics in process. It vouches exactly for the exports
    this module wrote with ``export()``, as the service would for its own; the real channel is proven in
    tests/integration/test_trust_persist.py."""

    issued: dict[str, dict] = {}

    def receipt(self, name: str) -> dict | None:
        return self.issued.get(name)


def daemon(config: NodeConfig) -> PersistDaemon:
    events = EventLog(config.event_log, "persist")
    return PersistDaemon(Committer(config, events, receipts=Vouched()), events)


def export(config: NodeConfig, step: int, sequence: int) -> Path:
    model = build()
    with torch.no_grad():
        model.head.bias.add_(float(step))
        model.step.fill_(step)
    source = {"slot": "A", "generation": 1, "manifest_digest": digest_of(config, "A", 1)}
    path, info = write_export(
        model.state_dict(), config.outbox, model="test", step=step, pause_s=0.0, sequence=sequence, source=source
    )
    Vouched.issued[path.name] = {"content_sha256": info.content_sha256, "source": source, "boot_id": "b00715"}
    return path


def generations(config: NodeConfig) -> list[int]:
    return [e["generation"] for e in Store.open(config.store).log()]


def events(config: NodeConfig, name: str) -> list[dict]:
    return read_events(config.event_log, frozenset({name}))


def quarantined(config: NodeConfig) -> list[str]:
    return sorted(p.name.rsplit(".", 1)[0] for p in (Path(config.outbox) / "quarantine").iterdir())


def test_exports_wait_until_a_good_checkpoint_is_served(node: NodeConfig) -> None:
    """Nothing is committed while no checkpoint proven GOOD is being served (e.g. during boot)."""
    path = export(node, 1, 1)
    assert daemon(node).process() is None
    assert path.exists() and generations(node) == [1]
    assert "proven GOOD" in events(node, "persist.deferred")[-1]["fields"]["reason"]


def test_boot_in_progress_defers_the_commit(node: NodeConfig) -> None:
    """A commit never starts while a boot holds the boot lock."""
    serving_good(node)
    export(node, 1, 1)
    with RunDir(node.run_dir).boot_lock():
        assert daemon(node).process() is None
    assert generations(node) == [1]


def test_newest_export_is_committed_and_older_ones_are_superseded(node: NodeConfig) -> None:
    """The newest valid export becomes the next generation, in the slot without the GOOD state."""
    serving_good(node)
    for step in (1, 2, 3):
        export(node, step, step)
    result = daemon(node).process()
    assert result is not None and (result.slot, result.generation) == ("B", 2)
    assert list(Path(node.outbox).glob("export-*")) == []
    assert Store.open(node.store).log()[0]["metadata"]["step"] == 3


def test_truncated_export_is_quarantined_and_the_previous_one_committed(node: NodeConfig) -> None:
    """A truncated outbox file gets a typed error and an event, is moved aside and never signed."""
    serving_good(node)
    export(node, 1, 1)
    bad = export(node, 2, 2)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    result = daemon(node).process()
    assert result is not None and result.generation == 2
    assert Store.open(node.store).log()[0]["metadata"]["step"] == 1
    rejected = events(node, "outbox.rejected")[-1]["fields"]
    assert rejected["file"] == bad.name and rejected["error"] == "ExportFileError"
    assert quarantined(node) == [bad.name]


def test_export_with_damaged_content_is_quarantined(node: NodeConfig) -> None:
    """A bit flip in tensor data fails the export's content digest; committed data is untouched."""
    serving_good(node)
    path = export(node, 1, 1)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="content"):
        open_export(path)
    assert daemon(node).process() is None
    assert generations(node) == [1] and quarantined(node) == [path.name]


def test_files_that_are_not_exports_are_quarantined(node: NodeConfig) -> None:
    """Stray files and well-named files that are not state exports are moved aside, never committed."""
    serving_good(node)
    (Path(node.outbox) / "notes.txt").write_text("hello")
    fake = Path(node.outbox) / "export-00000000000000000009.safetensors"
    fake.write_bytes(b"this is not a safetensors file at all")
    assert daemon(node).process() is None
    assert quarantined(node) == sorted([fake.name, "notes.txt"])
    assert {e["fields"]["error"] for e in events(node, "outbox.rejected")} == {"ExportFileError"}
    assert generations(node) == [1]


def test_commit_refused_when_the_target_slot_is_not_mounted(node: NodeConfig) -> None:
    """With require_mounts, a bare directory where slot B's partition belongs is never written."""
    serving_good(node)
    path = export(node, 1, 1)
    rootfs_trust = Path(node.store).parent / "trust.json"  # production keeps it off the store partition
    rootfs_trust.write_bytes((Path(node.store) / "trust.json").read_bytes())
    assert daemon(with_changes(node, require_mounts=True, trust=str(rootfs_trust))).process() is None
    failed = events(node, "persist.failed")[-1]["fields"]
    assert failed["error"] == "SlotUnavailableError"
    assert path.exists() and generations(node) == [1]
    assert not list((Path(node.store) / "B" / "frames").iterdir())


def test_daemon_rescans_on_start_and_feeds_the_systemd_watchdog(
    node: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export left while the watchdog was down is committed at start; the loop pings WATCHDOG=1."""
    import socket
    import threading

    serving_good(node)
    export(node, 1, 1)  # dropped before the daemon runs: no file event will ever announce it
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify))
        systemd.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")
        d = daemon(node)
        loop = threading.Thread(target=d.run)
        loop.start()
        try:
            assert systemd.recv(64) == b"WATCHDOG=1"
            generations: list[int] = []
            for _ in range(300):  # the seed's commit (generation 1) is already in the log
                generations = [e["fields"]["generation"] for e in events(node, "persist.committed")]
                if 2 in generations:
                    break
                threading.Event().wait(0.1)
            assert generations == [1, 2]
        finally:
            d.stop.set()
            d.wake.set()
            loop.join(30)
    assert not loop.is_alive()


@pytest.mark.parametrize("umask", [0o027, 0o077, 0o022])
def test_an_export_gets_the_mode_the_process_umask_gives_not_safetensors_0600(tmp_path: Path, umask: int) -> None:
    """Regression (VM tier): safetensors writes 0600, so the watchdog's user could read no export."""
    import os
    import stat

    old = os.umask(umask)
    try:
        path, _ = write_export({"w": torch.ones(3)}, tmp_path, model="m", step=1, pause_s=0.0, sequence=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
