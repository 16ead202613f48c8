"""In-process node fixtures (no supervisord): a seeded development node and "boot already chose A/1"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.cli.boot_commands import seed
from appliance.cli.main import main
from appliance.format import slotstate as ss
from appliance.format.handoff import Admit, Handoff
from appliance.node.config import NodeConfig, load_config
from appliance.node.rundir import RunDir
from appliance.storage import LocalStorage
from appliance.store.bootstate import SlotStates


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    """A node whose store holds generation 1 (slot A) of the built-in model."""
    assert main(["node-init", str(tmp_path / "n"), "--frame-size", "65536"]) == 0
    config = load_config(tmp_path / "n" / "node.json")
    seed(config)
    return config


def digest_of(config: NodeConfig, slot: str, generation: int) -> str:
    from appliance.store.store import Store

    return next(e["manifest_digest"] for e in Store.open(config.store).log() if e["generation"] == generation)


def handoff(config: NodeConfig, admit: Admit = Admit.BOOT, digest: str | None = None) -> Handoff:
    """Write the handoff boot would write for A/1."""
    h = Handoff("b00715", "A", 1, digest or digest_of(config, "A", 1), admit, "2026-01-01T00:00:00Z")
    RunDir(config.run_dir).write_handoff(h)
    return h


def serving_good(config: NodeConfig) -> None:
    """As after a successful boot: A/1 marked GOOD and the handoff says so."""
    h = handoff(config, Admit.SELF)
    states = SlotStates(LocalStorage(config.store))
    states.write(ss.mark_good(states.load("A"), 1, h.manifest_digest, "2026-01-01T00:00:00Z"))


def with_changes(config: NodeConfig, **changes: object) -> NodeConfig:
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]
