"""The first-boot units run the commands, in the order, and under the condition the code expects."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from appliance.provision.firstboot import FirstBootPaths

pytestmark = pytest.mark.unit
UNITS = Path(__file__).resolve().parents[2] / "bootstrap" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def _words(value: str) -> set[str]:
    return set(value.split())


def test_format_runs_before_the_slot_mounts_and_provision_after_them() -> None:
    fmt, prov = unit("appliance-firstboot-format.service"), unit("appliance-firstboot.service")
    mounts = {"var-lib-appliance-A.mount", "var-lib-appliance-B.mount"}
    assert mounts <= _words(fmt["Unit"]["Before"])
    assert fmt["Unit"]["DefaultDependencies"] == "no"
    assert fmt["Service"]["ExecStart"].endswith("appliance firstboot format --config /etc/appliance/node.json")
    assert prov["Service"]["ExecStart"].endswith("appliance firstboot provision --config /etc/appliance/node.json")
    # configparser keeps the last of repeated After= lines; the first names the format unit and mounts
    text = (UNITS / "appliance-firstboot.service").read_text()
    assert "After=appliance-firstboot-format.service var-lib-appliance-A.mount var-lib-appliance-B.mount" in text
    assert {"appliance-supervisor.service", "appliance-boot.service"} <= _words(prov["Unit"]["Before"])


def test_both_stop_running_once_done_json_exists() -> None:
    done = str(FirstBootPaths().done)
    for name in ("appliance-firstboot-format.service", "appliance-firstboot.service"):
        u = unit(name)
        assert u["Unit"]["ConditionPathExists"] == f"!{done}"
        assert u["Service"]["Type"] == "oneshot" and "console" in u["Service"]["StandardOutput"]
    assert unit("appliance-firstboot.service")["Service"]["StateDirectory"] == Path(done).parent.name


def test_the_partitions_are_waited_for_by_partlabel() -> None:
    fmt = unit("appliance-firstboot-format.service")
    for label in ("CKPT_A", "CKPT_B"):
        assert f"dev-disk-by\\x2dpartlabel-{label}.device" in _words(fmt["Unit"]["After"])
