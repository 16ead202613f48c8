"""The target's dependency lock: complete, hash-pinned, resolved for Python 3.10 on aarch64 (the Jetson)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "image" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def _pins() -> dict[str, tuple[Version, list[str]]]:
    pins: dict[str, tuple[Version, list[str]]] = {}
    current = ""
    for line in LOCK.read_text().splitlines():
        if m := PIN.match(line):
            current = re.sub(r"[-_.]+", "-", m[1]).lower()
            pins[current] = (Version(m[2]), [])
        elif "--hash=sha256:" in line:
            pins[current][1].append(line.split("sha256:")[1].rstrip(" \\"))
    return pins


def _project_dependencies() -> list[Requirement]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert block
    reqs = re.findall(r'^\s*"([^"]+)"', block[1], re.M)
    for extra in ("console", "remote"):  # what a node runs besides the core (image/lock.py NODE_EXTRAS)
        m = re.search(rf"^{extra} = \[(.*?)\]", text, re.S | re.M)
        assert m, extra
        reqs += re.findall(r'"([^"]+)"', m[1])
    return [Requirement(r) for r in reqs]


@pytest.mark.unit
def test_every_project_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for req in _project_dependencies():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not in image/requirements.lock: run python3 image/lock.py"
        assert pins[name][0] in req.specifier, f"{req.name} {pins[name][0]} is outside {req.specifier}"


@pytest.mark.unit
def test_every_pin_carries_sha256_hashes_and_torch_is_not_locked() -> None:
    pins = _pins()
    assert pins, "empty lock"
    for name, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    assert "torch" not in pins  # NVIDIA's JetPack wheel is an input of the package build, never locked


@pytest.mark.unit
def test_watchdog_is_the_last_release_that_runs_on_python_3_10() -> None:
    version = _pins()["watchdog"][0]
    assert version < Version("7"), "watchdog 7 needs Python 3.11; the Jetson runs 3.10"


@pytest.mark.integration
def test_lock_resolves_for_manylinux2014_aarch64_python_3_10_and_the_vm() -> None:
    """pip --require-hashes refuses an unpinned dependency, a missing wheel or a changed file."""
    done = subprocess.run(
        [sys.executable, str(REPO / "image" / "lock.py"), "--check"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--platform manylinux2014_aarch64 --python-version 3.10" in done.stdout
