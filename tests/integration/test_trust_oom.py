"""Crash accounting that blames correctly: real kernel OOM kills (a memory cgroup with a limit) of the real
service under real supervisord never condemn a GOOD checkpoint; a crash of its own still counts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.node import kills
from tests.integration.boot_harness import NodeFactory, node_factory
from tests.integration.fixture_models import MEMORY_HOG

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.root]
__all__ = ["node_factory"]
LIMIT = 2 << 30  # the service (~0.5 GiB) fits; its 4 GiB hog does not
X = [[0.25] * 16]


@contextlib.contextmanager
def memory_cgroup(name: str) -> Iterator[Path]:
    """A child memory cgroup of this process's own (v1 here, v2 elsewhere) limited to LIMIT bytes."""
    counter = kills.counter_of(os.getpid())
    if os.geteuid() != 0 or counter == kills.VMSTAT:
        pytest.skip("needs root and a memory cgroup this process may create children in (CI runs as root)")
    group = counter.parent / name
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {counter.parent}: {exc}")
    try:
        if (group / "memory.limit_in_bytes").exists():  # v1
            (group / "memory.limit_in_bytes").write_text(str(LIMIT))
            with contextlib.suppress(OSError):
                (group / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
        else:
            (group / "memory.max").write_text(str(LIMIT))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        yield group
    finally:
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                (counter.parent / "cgroup.procs").write_text(pid)
            group.rmdir()


def oom_then_serving(node: LocalNode, after: int) -> dict:
    with pytest.raises(Exception):
        node.call("/v1/infer", {"inputs": [[MEMORY_HOG] * 16]}, timeout=120)
    killed: dict = node.wait_event("service.killed", after=after, timeout=120)
    node.wait_serving(timeout=120)
    return killed


def test_oom_kills_do_not_condemn_a_good_slot(node_factory: NodeFactory) -> None:
    """Four OOM kills with max_boot_attempts=2: each is `service.killed`, the slot stays GOOD and serves."""
    node = node_factory(model="tests.integration.fixture_models:hog", max_boot_attempts=2)
    node.seed()
    node.start()
    with memory_cgroup(f"appliance-oom-{os.getpid()}") as group:
        assert node.supervisord is not None
        (group / "cgroup.procs").write_text(str(node.supervisord.pid))  # the service boot starts inherits it
        # the standby supervisord started before the move is outside the group: boot starts a fresh one inside
        node.control().stop(node.config.service_program)
        code, outcome = node.boot()
        assert code == 0, outcome
        for n in range(4):
            killed = oom_then_serving(node, n)["fields"]
            assert "OOM" in killed["cause"] and (killed["slot"], killed["generation"]) == ("A", 1)
        assert not node.events("service.crashed") and not node.events("slot.marked_bad")
        slot = node.cli_json("boot-status")[1]["slots"]["A"]
        assert slot["state"] == "GOOD" and slot["attempts"] == 0
        status, body = node.call("/v1/infer", {"inputs": X})
        assert status == 200 and body["generation"] == 1
