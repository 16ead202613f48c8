"""A seeded development node with three generations and a provisioned technician, for console tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.cli.boot_commands import seed
from appliance.cli.main import main
from appliance.console.credentials import Technicians
from appliance.node.config import NodeConfig, load_config

TECH, PASSWORD = "alice", "correct horse battery"


@dataclass(frozen=True)
class Node:
    config: NodeConfig
    config_path: Path
    state_dir: Path


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (three seeds take a few seconds); each test gets a copy."""
    root = tmp_path_factory.mktemp("console-node") / "n"
    assert main(["node-init", str(root), "--frame-size", "65536"]) == 0
    config = load_config(root / "node.json")
    for _ in range(3):
        seed(config)
    return root


@pytest.fixture
def node(seeded_template: Path, tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "n"
    shutil.copytree(seeded_template, root, symlinks=True)
    state = root / "console"
    Technicians(state).set(TECH, PASSWORD)
    yield Node(load_config(root / "node.json"), root / "node.json", state)
