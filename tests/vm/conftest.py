"""VM tier fixtures: the image (built once per run, reused while its inputs are unchanged) and the metrics.

The image is image/build-vm.sh's output with the guest agent (tests/vm/guest) overlaid. It is
cached in out/image/vm-test under a digest of every input file (the package's code, units, image
scripts, lock and the agent), so the steps of one run, and runs on an unchanged tree, share it.
``VM_IMAGE_DIR=DIR`` uses a prebuilt image instead. Measurements (power-on-to-serving, cut counts)
are printed in the terminal summary and written to out/image/vm-results.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm.qemu import have_tools

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "out" / "image" / "vm-test"
RESULTS = REPO / "out" / "image" / "vm-results.json"
PERSIST_INTERVAL = 3  # seconds: the VM's node persists often so cuts land during persists
INPUTS = ("appliance", "systemd", "bootstrap/systemd", "image", "tests/vm/guest", "pyproject.toml")
METRICS: dict[str, Any] = {}


def _inputs_digest() -> str:
    h = hashlib.sha256(f"persist_interval={PERSIST_INTERVAL}".encode())
    for top in INPUTS:
        path = REPO / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.fixture(scope="session")
def vm_image() -> Path:
    why = have_tools()
    if why:
        pytest.skip(why)
    if os.environ.get("VM_IMAGE_DIR"):
        return Path(os.environ["VM_IMAGE_DIR"]).resolve()
    digest = _inputs_digest()
    stamp = IMAGE_DIR / "inputs.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and (IMAGE_DIR / "root.img").exists():
        METRICS["image_build_s"] = "cached"
        return IMAGE_DIR
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO / "image/build-vm.sh"), "--out", str(IMAGE_DIR), "--extra-root", str(REPO / "tests/vm/guest"),
         "--persist-interval", str(PERSIST_INTERVAL)],
        capture_output=True, text=True, timeout=2400, cwd=REPO,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"image/build-vm.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    stamp.write_text(digest + "\n")
    METRICS["image_build_s"] = round(time.monotonic() - start, 1)
    return IMAGE_DIR


@pytest.fixture(scope="session")
def metrics() -> Iterator[dict[str, Any]]:
    yield METRICS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not METRICS:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(METRICS, indent=2, sort_keys=True) + "\n")
    terminalreporter.write_sep("-", "VM tier measurements")
    for key, value in sorted(METRICS.items()):
        terminalreporter.write_line(f"{key}: {value}")
