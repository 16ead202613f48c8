"""The node's Debian package: everything in systemd/ lands where systemd looks, the wheelhouse is the lock.

Builds ``appliance_<version>_amd64.deb`` without torch (what a package carries besides torch is the
same with it) and inspects it with dpkg-deb; installing it into a real rootfs is the VM tier's job
(tests/vm, which builds its image with image/customize-rootfs.sh).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed (Debian package dpkg)"),
]


def _layout():
    spec = importlib.util.spec_from_file_location("deb_layout", REPO / "image" / "deb_layout.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("deb")
    done = subprocess.run(
        ["bash", str(REPO / "image" / "build-deb.sh"), "--arch", "amd64", "--without-torch", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHON": sys.executable, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.name == "appliance_0.1.0_amd64.deb"
    tree = out / "x"
    subprocess.run(["dpkg-deb", "-R", str(path), str(tree)], check=True)
    return path, tree


def test_every_file_of_systemd_dir_is_installed_where_systemd_reads_it(deb) -> None:
    _, tree = deb
    layout = _layout()
    expected = {}
    for source in (REPO / "systemd", REPO / "bootstrap" / "systemd"):
        for f in (p for p in source.rglob("*") if p.is_file()) if source.is_dir() else ():
            dest = layout.destination(f.relative_to(source))
            if dest is not None:
                expected[dest] = f
    assert "usr/lib/systemd/system/appliance-supervisor.service" in expected
    assert "usr/lib/tmpfiles.d/appliance.conf" in expected
    for dest, source in expected.items():
        assert (tree / dest).read_bytes() == source.read_bytes(), dest
    assert (tree / "usr/bin/appliance").readlink() == Path("/opt/appliance/venv/bin/appliance")


def test_layout_refuses_a_file_it_does_not_know() -> None:
    with pytest.raises(SystemExit, match="do not know where"):
        _layout().destination(Path("mystery.bin"))


def test_control_conffiles_and_maintainer_scripts(deb) -> None:
    path, tree = deb
    control = (tree / "DEBIAN/control").read_text()
    assert re.search(r"^Architecture: amd64$", control, re.M)
    assert re.search(r"^Depends: .*python3-venv", control, re.M)
    conffiles = set((tree / "DEBIAN/conffiles").read_text().split())
    assert {"/etc/appliance/node.json", "/etc/appliance/supervisord.conf"} <= conffiles
    assert conffiles == {"/" + str(p.relative_to(tree)) for p in (tree / "etc").rglob("*") if p.is_file()}
    for script in ("postinst", "prerm", "postrm"):
        assert subprocess.run(["sh", "-n", str(tree / "DEBIAN" / script)]).returncode == 0
    postinst = (tree / "DEBIAN/postinst").read_text()
    assert "--no-index" in postinst and "--require-hashes" in postinst  # install needs no network
    units = (tree / "opt/appliance/units").read_text().split()
    assert {"appliance-supervisor.service", "appliance-boot.service", "var-lib-appliance-A.mount"} <= set(units)


def test_wheelhouse_is_exactly_the_lock_for_the_target_plus_our_wheel(deb) -> None:
    _, tree = deb
    lock = (REPO / "image/requirements.lock").read_text()
    hashes = set(re.findall(r"sha256:([0-9a-f]{64})", lock))
    pins = len(re.findall(r"^\S+==\S+ \\$", lock, re.M))
    wheels = sorted((tree / "opt/appliance/wheelhouse").glob("*.whl"))
    ours = [w for w in wheels if w.name.startswith("appliance-")]
    assert len(ours) == 1
    others = [w for w in wheels if w not in ours]
    assert len(others) == pins
    for wheel in others:
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() in hashes, wheel.name
        assert re.search(r"(none-any|x86_64)\.whl$", wheel.name), wheel.name  # the amd64 target's wheels
    assert (tree / "opt/appliance/requirements.lock").read_text() == lock


def test_package_needs_an_explicit_torch_decision(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "image/build-deb.sh"), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "--torch-wheel" in done.stderr and "--without-torch" in done.stderr
