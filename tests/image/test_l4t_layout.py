"""The node's L4T partition layout: CKPT_A/CKPT_B are data partitions without ids, before APP, APP stays p1.

The input is a stand-in for NVIDIA's flash_l4t_t234_nvme.xml written from its documented structure
(the BSP cannot be downloaded here); the real file goes through the same tool on a build host (hil).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

L4T = Path(__file__).resolve().parents[2] / "image" / "l4t"
STAND_IN = L4T / "flash_l4t_t234_nvme.stand-in.xml"
DERIVED = L4T / "flash_l4t_t234_nvme_ckpt.xml"


def _layout() -> ModuleType:
    spec = importlib.util.spec_from_file_location("l4t_layout", L4T / "layout.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


layout = _layout()


def _names(tree: ET.ElementTree) -> list[str]:
    return [p.get("name", "") for p in tree.getroot().iter("partition")]


def test_committed_layout_is_the_tool_output_of_the_stand_in(tmp_path: Path) -> None:
    out = tmp_path / "derived.xml"
    subprocess.run([sys.executable, L4T / "layout.py", STAND_IN, "-o", out], check=True, capture_output=True)
    assert out.read_bytes() == DERIVED.read_bytes(), "regenerate image/l4t/flash_l4t_t234_nvme_ckpt.xml"


def test_ckpt_partitions_are_named_typed_sized_and_unnumbered() -> None:
    tree = layout.load(DERIVED)
    assert layout.check(tree, layout.DEFAULT_CKPT_SIZE) == []
    parts = {p.get("name"): p for p in tree.getroot().iter("partition")}
    for name in ("CKPT_A", "CKPT_B"):
        part = parts[name]
        assert part.get("type") == "data"
        assert "id" not in part.attrib
        assert int(part.findtext("size", "").strip()) == 8 * 1024**3
        assert part.find("filename") is None  # flashed empty, formatted at first boot


def test_app_stays_p1_and_everything_else_keeps_its_order() -> None:
    original, derived = layout.load(STAND_IN), layout.load(DERIVED)
    names = _names(derived)
    assert [n for n in names if not n.startswith("CKPT_")] == _names(original)
    assert names.index("CKPT_A") + 1 == names.index("CKPT_B")
    assert names.index("CKPT_B") + 1 == names.index("APP")
    ids = {p.get("name"): p.get("id") for p in derived.getroot().iter("partition") if p.get("id")}
    assert ids == {"APP": "1", "A_kernel": "2"}
    app = next(p for p in derived.getroot().iter("partition") if p.get("name") == "APP")
    assert app.findtext("allocation_attribute", "").strip() == "0x808"  # APP still takes the rest


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.set("id", "3"), "must have no id"),
        (lambda p: p.set("type", "kernel"), "must be type=data"),
        (lambda p: p.find("size").__setattr__("text", " 1000 "), "not a positive multiple"),
        (lambda p: ET.SubElement(p, "filename").__setattr__("text", "ckpt.img"), "flashed empty"),
    ],
    ids=["id", "type", "size", "filename"],
)
def test_check_names_each_broken_rule(mutate, expected) -> None:
    tree = layout.load(DERIVED)
    part = next(p for p in tree.getroot().iter("partition") if p.get("name") == "CKPT_B")
    mutate(part)
    problems = layout.check(tree)
    assert any(expected in p for p in problems), problems


def test_check_refuses_app_moved_off_p1_and_ckpt_after_app() -> None:
    tree = layout.load(DERIVED)
    device = next(tree.getroot().iter("device"))
    app = next(p for p in device.iter("partition") if p.get("name") == "APP")
    app.set("id", "2")
    ckpt_a = next(p for p in device.iter("partition") if p.get("name") == "CKPT_A")
    device.remove(ckpt_a)
    device.append(ckpt_a)
    problems = layout.check(tree)
    assert any("APP must keep id 1" in p for p in problems)
    assert any("CKPT_A must come before APP" in p for p in problems)


def test_adding_twice_or_to_a_layout_without_app_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already has CKPT"):
        layout.add_ckpt_partitions(layout.load(DERIVED))
    no_app = tmp_path / "no_app.xml"
    no_app.write_text(
        '<partition_layout><device type="external"><partition name="UDA" type="data"/></device></partition_layout>'
    )
    with pytest.raises(ValueError, match="one device holding APP"):
        layout.add_ckpt_partitions(layout.load(no_app))
    with pytest.raises(ValueError, match="multiple of 16384"):
        layout.add_ckpt_partitions(layout.load(STAND_IN), size=1000)


def test_cli_check_exit_status(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, L4T / "layout.py", "--check", DERIVED], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, L4T / "layout.py", "--check", STAND_IN], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "CKPT_A must appear exactly once" in bad.stderr
