"""A technician's USB stick for the VM tier, made on the host with the product's own commands.

``make_stick``: a copy of the image build's development release node (``RELEASE/node``: its key is
the release key the image trusts) commits the model's fresh state at a chosen generation (the floor
raised to it first: generations are one above everything seen and never below the floor), ``appliance
export`` writes it as the portable layout, and ``mkfs.vfat`` + mtools ``mcopy`` put that layout on a
FAT image (no mount). The guest must see it as newer than anything it has committed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from appliance.cli.boot_commands import seed
from appliance.cli.main import main
from appliance.node.config import load_config
from appliance.node.floor import open_floor

TOOLS = ("mkfs.vfat", "mcopy")


def tools_missing() -> str | None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    return f"missing {', '.join(missing)} (apt-get install dosfstools mtools)" if missing else None


def make_stick(release: Path, work: Path, generation: int, size_mb: int = 64) -> tuple[Path, int]:
    """(FAT image, generation on it): a release-signed checkpoint of the factory model at ``generation``."""
    node = work / "release-node"
    shutil.copytree(release / "node", node, symlinks=True)
    config = load_config(node / "node.json")
    open_floor(config).raise_to(generation)
    committed = int(seed(config, force=True)["generation"])  # the release node already holds generation 1
    assert committed == generation, (committed, generation)
    layout = work / "layout"
    assert main(["export", config.store, "--generation", str(generation), str(layout)]) == 0
    image = work / "stick.img"
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.vfat", "-n", "FIELDKIT", str(image)], check=True, capture_output=True, timeout=60)
    for child in sorted(layout.iterdir()):
        subprocess.run(["mcopy", "-i", str(image), "-s", str(child), "::/"], check=True, capture_output=True,
                       timeout=300)  # fmt: skip
    return image, generation


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
