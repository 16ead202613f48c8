"""Fixtures and helpers for the supervised tests: real supervisord, real service, loopback, temp node.

Import the fixture into a test module (``from tests.integration.boot_harness import node_factory``).
Every node is torn down with a power cut, so a failing test never leaves processes behind.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance import api
from appliance.cli.localnode import LocalNode
from appliance.signing import SigningKey
from appliance.store.store import Store

REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO)}  # supervised programs import tests.integration.fixture_models
NodeFactory = Callable[..., LocalNode]


@pytest.fixture
def node_factory() -> Iterator[NodeFactory]:
    """Make nodes in a short temp dir (unix socket paths must stay under 108 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="ap-", dir="/tmp"))
    nodes: list[LocalNode] = []

    def make(**options: Any) -> LocalNode:
        options.setdefault("persist_interval", 3600)
        options.setdefault("ready_timeout", 90)
        options.setdefault("frame_size", 256 * 1024)
        node = LocalNode.create(base / f"n{len(nodes)}", env=ENV, **options)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.power_cut()
    shutil.rmtree(base, ignore_errors=True)


def store_of(node: LocalNode) -> Store:
    return Store.open(node.config.store)


def commit_variant(
    node: LocalNode,
    state: Callable[[dict[str, torch.Tensor]], None] | None = None,
    meta: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Commit the newest checkpoint again with its state and/or metadata changed; returns the generation."""
    store = store_of(node)
    loaded = api.load(store)
    tensors, metadata = dict(loaded.tensors), dict(loaded.metadata)
    if state:
        state(tensors)
    if meta:
        meta(metadata)
    result = api.save(store, tensors, SigningKey.load(node.config.signing_key), metadata)
    return result.generation


def corrupt_newest_frame(node: LocalNode, slot: str) -> Path:
    """Flip one bit in the largest frame of ``slot`` (size unchanged: only hashing can tell)."""
    frames = Path(node.config.store) / slot / "frames"
    victim = max(frames.iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    return victim


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]
