"""The shipped systemd units, supervisord config, node.json and journald catalog agree with the code."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from appliance.boot.supervisord_conf import production, render
from appliance.events import render_catalog
from appliance.node.config import NodeConfig, load_config

pytestmark = pytest.mark.unit
SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / name)
    return parser


def test_supervisord_conf_is_the_rendered_template() -> None:
    assert (SYSTEMD / "supervisord.conf").read_text() == render(production())


def test_node_json_is_the_production_configuration() -> None:
    config = load_config(SYSTEMD / "node.json")
    assert config == NodeConfig(require_mounts=True, trust="/etc/appliance/trust.json")
    layout = production()
    assert layout.socket == config.supervisor_socket and layout.config == "/etc/appliance/node.json"
    assert (layout.service, layout.persist) == (config.service_program, config.persist_program)


def test_units_call_the_commands_and_files_the_code_uses() -> None:
    layout, config = production(), NodeConfig()
    boot = unit("appliance-boot.service")
    assert boot["Service"]["ExecStart"] == f"{layout.appliance} boot --config {layout.config}"
    assert boot["Service"]["Type"] == "notify" and boot["Unit"]["PartOf"] == "appliance-supervisor.service"
    sup = unit("appliance-supervisor.service")
    assert "-c /etc/appliance/supervisord.conf" in sup["Service"]["ExecStart"]
    assert sup["Service"]["NotifyAccess"] == "all" and int(sup["Service"]["WatchdogSec"]) > 0
    assert config.store in sup["Unit"]["RequiresMountsFor"].split()
    for slot in "AB":
        mount = unit(f"var-lib-appliance-{slot}.mount")
        assert mount["Mount"]["Where"] == f"{config.store}/{slot}"
        assert mount["Mount"]["What"] == f"/dev/disk/by-partlabel/CKPT_{slot}"
        assert f"var-lib-appliance-{slot}.mount" in sup["Unit"]["Wants"].split()


def test_hardware_watchdog_is_systemds() -> None:
    manager = unit("system.conf.d/10-appliance-watchdog.conf")["Manager"]
    assert manager["RuntimeWatchdogSec"] and manager["RebootWatchdogSec"]
    code = Path(__file__).resolve().parents[2] / "appliance"
    assert not any("/dev/watchdog" in p.read_text() for p in code.rglob("*.py"))


def test_journald_catalog_is_rendered_from_the_catalogue() -> None:
    assert (SYSTEMD / "appliance.catalog").read_text() == render_catalog()
