"""Issue 16 goal 3: the service writes exports on one thread below serving priority, never a request thread.

Runs in a child process: a lowered thread cannot be raised again, and the test runner's own
threads must keep their priority.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # torch (the service's export module)

CHILD = """
import json, os, sys, threading
import torch
from appliance.errors import ExportFileError
from appliance.service.export import Snapshot, Writer

def nice_of(name):
    for t in threading.enumerate():
        if t.name.startswith(name):
            return os.getpriority(os.PRIO_PROCESS, t.native_id)
    return None

writer = Writer({nice})
result = writer.run(Snapshot({{"w": torch.ones(64)}}, 1, None, 0.0), sys.argv[1], "m", None)
refused = None
try:
    writer.run(Snapshot({{"w": torch.tensor([1.0, float("nan")])}}, 2, None, 0.0), sys.argv[1], "m", None)
except ExportFileError as exc:
    refused = exc.problem
print(json.dumps({{"file": result.path.name, "writer": nice_of("export-write"),
                  "caller": os.getpriority(os.PRIO_PROCESS, 0), "refused": refused}}))
"""


def _child(nice: int, outbox: str) -> dict[str, object]:
    code = CHILD.format(nice=nice)
    out = subprocess.run([sys.executable, "-c", code, outbox], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_exports_are_written_below_serving_priority_and_request_threads_keep_theirs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    got = _child(10, str(tmp_path))
    assert got["writer"] == 10 and got["caller"] == 0
    assert (tmp_path / str(got["file"])).is_file()
    assert "NaN" in str(got["refused"])  # the writer thread's checks still reach the caller as typed errors


def test_persist_nice_zero_leaves_the_writer_at_serving_priority(tmp_path) -> None:  # type: ignore[no-untyped-def]
    got = _child(0, str(tmp_path))
    assert got["writer"] == 0 and got["caller"] == 0
