"""Issue 16 goal 3: the persistence watchdog runs below the service, in every thread it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from appliance.node.config import NodeConfig
from appliance.node.priority import io_level_for

pytestmark = pytest.mark.unit

CHILD = """
import json, os, threading
from concurrent.futures import ThreadPoolExecutor
from appliance.node.priority import io_priority, lower_priority
p = lower_priority({nice})
def report():
    return os.getpriority(os.PRIO_PROCESS, 0), io_priority()
with ThreadPoolExecutor(2) as pool:  # threads created later, like the commit's encoder and writers
    worker = pool.submit(report).result()
print(json.dumps({{"main": report(), "worker": worker, "describe": p.describe()}}))
"""


def _child(nice: int) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(nice=nice)], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_watchdog_threads_inherit_lower_cpu_and_io_priority() -> None:
    got = _child(10)
    for who in ("main", "worker"):
        nice, (io_class, io_level) = got[who]  # type: ignore[misc]
        assert nice >= 10, who
        assert (io_class, io_level) in {(2, 6), (3, 0)} or (io_class == 2 and io_level >= 6), who
    assert "nice 10" in str(got["describe"])


def test_nice_zero_changes_nothing_and_the_default_is_lowered() -> None:
    assert NodeConfig().persist_nice == 10 and io_level_for(10) == 6 and io_level_for(19) == 7
    got = _child(0)
    nice, _ = got["worker"]  # type: ignore[misc]
    assert nice == os.getpriority(os.PRIO_PROCESS, 0)  # unchanged: the test runner's own niceness
    assert "not lowered" in str(got["describe"])
