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
from appliance.store.store import Store
from tests.console import usb_sticks as sticks

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
    for i in range(3):
        seed(config, force=i > 0)  # generations 2 and 3: the factory state again, deliberately
    return root


@pytest.fixture
def node(seeded_template: Path, tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "n"
    shutil.copytree(seeded_template, root, symlinks=True)
    state = root / "console"
    Technicians(state).set(TECH, PASSWORD)
    yield Node(load_config(root / "node.json"), root / "node.json", state)


@dataclass(frozen=True)
class Stick:
    loop: str
    device_file: Path
    image: Path


@pytest.fixture(scope="session")
def stick_layout(seeded_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A portable layout with generation 4 of the console node's model, signed by the node's own key."""
    work = tmp_path_factory.mktemp("stick-src")
    other = work / "n"
    shutil.copytree(seeded_template, other, symlinks=True)
    config = load_config(other / "node.json")
    _commit_changed(config)  # generation 4, with frames the node does not have, exists only on the stick
    layout = work / "layout"
    assert main(["export", str(other / "store"), "--generation", "4", str(layout)]) == 0
    return layout


def _commit_changed(config: object) -> None:
    """Commit the newest state with every float tensor nudged, signed by the node's key."""
    import torch

    from appliance import api
    from appliance.signing import SigningKey

    store = Store.open(config.store)  # type: ignore[attr-defined]
    loaded = api.load(store)
    changed = {k: (v + 1).to(v.dtype) if v.is_floating_point() else v for k, v in loaded.tensors.items()}
    assert any(not torch.equal(changed[k], loaded.tensors[k]) for k in changed)
    api.save(store, changed, SigningKey.load(config.signing_key), dict(loaded.metadata))  # type: ignore[attr-defined]


def _stick(tmp_path: Path, layout: Path | None) -> Iterator[Stick]:
    image = tmp_path / "stick.img"
    sticks.make_fat_image(image, layout)
    loop = sticks.attach(image)
    try:
        yield Stick(loop, sticks.umockdev_file(tmp_path / "stick.umockdev", loop), image)
    finally:
        sticks.detach(loop)


@pytest.fixture
def stick(tmp_path: Path, stick_layout: Path) -> Iterator[Stick]:
    if (why := sticks.usb_tools_missing()) is not None:
        pytest.skip(why)
    yield from _stick(tmp_path, stick_layout)
