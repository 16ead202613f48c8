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
    from appliance.boot.privileges import CHANNEL_INBOX

    config = load_config(SYSTEMD / "node.json")
    assert config == NodeConfig(require_mounts=True, trust="/etc/appliance/trust.json", channel_inbox=CHANNEL_INBOX)
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


# --- privileges (issue 10) ------------------------------------------------------------------

ANALYZE_GOAL = 4.0


def _service_units() -> list[Path]:
    """Every shipped service: the node's (systemd/) and the first-boot ones (bootstrap/systemd/)."""
    return sorted([*SYSTEMD.glob("*.service"), *(SYSTEMD.parent / "bootstrap" / "systemd").glob("*.service")])


def test_tmpfiles_conf_is_the_rendered_rules() -> None:
    from appliance.boot.privileges import render_tmpfiles

    assert (SYSTEMD / "tmpfiles.d" / "appliance.conf").read_text() == render_tmpfiles(NodeConfig())


def test_sysusers_define_every_user_in_the_appliance_group() -> None:
    from appliance.boot.privileges import GROUP, USERS

    rows = [line.split() for line in (SYSTEMD / "sysusers.d" / "appliance.conf").read_text().splitlines()]
    rows = [r for r in rows if r and not r[0].startswith("#")]
    assert ["g", GROUP, "-"] in rows
    assert {r[1] for r in rows if r[0] == "u"} == set(USERS)
    assert {r[1] for r in rows if r[0] == "m" and r[2] == GROUP} == set(USERS)


def test_units_and_programs_run_as_their_users() -> None:
    boot = unit("appliance-boot.service")["Service"]
    assert (boot["User"], boot["Group"], boot["CapabilityBoundingSet"]) == ("appliance-boot", "appliance", "")
    # blame table: node faults (exit 65) are retried by systemd, recovery mode (exit 50) is not
    assert (boot["Restart"], boot["RestartPreventExitStatus"]) == ("on-failure", "50")
    sup = unit("appliance-supervisor.service")["Service"]
    assert set(sup["CapabilityBoundingSet"].split()) == {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN"}
    for service in (boot, sup):
        assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
        assert service["PrivateTmp"] == service["ProtectHome"] == "yes" and service["UMask"] == "0027"
    assert sup["MemoryMax"]
    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.read(SYSTEMD / "supervisord.conf")
    assert conf["program:model"]["user"] == "appliance-serve"
    assert conf["program:persist"]["user"] == "appliance-persist"
    assert conf["eventlistener:guard"]["user"] == "appliance-boot"
    assert conf["unix_http_server"]["chown"] == "appliance-boot:appliance-boot"
    assert conf["unix_http_server"]["chmod"] == "0700"


def _analyze(path: Path) -> float:
    import re
    import shutil
    import subprocess

    tool = shutil.which("systemd-analyze")
    assert tool is not None
    done = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, f"systemd-analyze printed no exposure level for {path.name}:\n{done.stdout}\n{done.stderr}"
    return float(found[1])


def test_shipped_units_meet_the_systemd_analyze_goal() -> None:
    """`systemd-analyze security --offline=true` rates every shipped service at or below 4.0."""
    import os
    import shutil

    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs systemd (bootstrap/deps.d/20-privileges.sh); systemd-analyze is missing")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd; bootstrap/deps.d/20-privileges.sh)")
    scores = {path.name: _analyze(path) for path in _service_units()}
    assert scores and all(score <= ANALYZE_GOAL for score in scores.values()), scores


def _sysusers_members() -> dict[str, set[str]]:
    """user -> the groups ``m USER GROUP`` lines of the shipped sysusers.d add it to."""
    members: dict[str, set[str]] = {}
    for line in (SYSTEMD / "sysusers.d" / "appliance.conf").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "m":
            members.setdefault(fields[1], set()).add(fields[2])
    return members


def test_unit_users_hold_every_group_the_tmpfiles_rules_grant_them() -> None:
    """Regression (VM tier): ``User=appliance-boot`` + ``Group=appliance`` left out the user's own group.

    systemd sets Group= and the groups that *list* the user as a member (initgroups), never the
    user's primary group by name; boot then could not reach supervisord's socket directory or the
    floor directory (both group ``appliance-boot``) and never served under a real systemd.
    """
    from appliance.boot.privileges import USERS, render_tmpfiles

    granted = {line.split()[4] for line in render_tmpfiles(NodeConfig()).splitlines()
               if line and not line.startswith("#") and len(line.split()) > 4}  # fmt: skip
    members = _sysusers_members()
    for path in _service_units():
        service = unit(path.name)["Service"] if path.parent == SYSTEMD else None
        if service is None or service.get("User", "root") not in USERS:
            continue
        user = service["User"]
        groups = {service.get("Group", user), *service.get("SupplementaryGroups", "").split(), *members.get(user, ())}
        missing = {g for g in granted if g == user} - groups
        assert not missing, f"{path.name}: runs as {user} without group(s) {missing} that its paths are granted to"


def test_supervisor_unit_lets_every_program_write_what_it_owns() -> None:
    """ProtectSystem=strict: every directory a supervisord program writes is in ReadWritePaths."""
    from appliance.boot.privileges import render_tmpfiles

    config = NodeConfig()
    writable = set(unit("appliance-supervisor.service")["Service"]["ReadWritePaths"].split())
    # every directory the rules create under /var/lib (state of console, replication, channel, ...)
    created = {line.split()[1] for line in render_tmpfiles(config).splitlines()
               if line.startswith("d ") and line.split()[1].startswith("/var/lib/appliance-")}  # fmt: skip
    needed = {*created, config.outbox, config.run_dir, config.store,
              str(Path(config.floor_file).parent), str(Path(config.event_log).parent)}  # fmt: skip
    assert needed <= writable, sorted(needed - writable)


def test_the_channel_program_runs_as_its_own_user_that_owns_only_its_state_and_inbox() -> None:
    """The fleet channel parses network input: its user is not the store's writer (docs/design.md §7.2).

    sysusers creates ``appliance-channel`` in group ``appliance`` (it reads the store to download only
    what the node lacks); tmpfiles gives it its state (0700) and the inbox (2750, group ``appliance``: the
    persistence watchdog reads and imports it), nothing else; the supervisor unit lets it write both; the
    shipped node.json points the channel and the watchdog at that inbox.
    """
    from appliance.boot.privileges import CHANNEL, CHANNEL_INBOX, CHANNEL_STATE, GROUP, PERSIST, render_tmpfiles

    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.read(SYSTEMD / "supervisord-channel.conf")
    assert conf["program:channel"]["user"] == CHANNEL != PERSIST
    assert GROUP in _sysusers_members()[CHANNEL]
    rows = [line.split() for line in render_tmpfiles(NodeConfig()).splitlines() if line and not line.startswith("#")]
    owned = {(r[0], r[1], r[2], r[4]) for r in rows if len(r) > 4 and CHANNEL in (r[3], r[4])}
    assert owned == {("d", CHANNEL_STATE, "0700", CHANNEL), ("d", CHANNEL_INBOX, "2750", GROUP)}
    store = NodeConfig().store
    inside = [r for r in rows if r[1] == store or r[1].startswith(store + "/") or r[1].endswith(".key")]
    assert inside and all(CHANNEL not in r[3:5] for r in inside)  # never owns the store or a key
    writable = unit("appliance-supervisor.service")["Service"]["ReadWritePaths"].split()
    assert CHANNEL_STATE in writable and CHANNEL_INBOX in writable
    assert load_config(SYSTEMD / "node.json").channel_inbox == CHANNEL_INBOX


def test_usb_helper_unit_reaches_the_run_dir_without_dac_capabilities() -> None:
    """Regression (VM tier): the USB helper runs as root with ``CapabilityBoundingSet=CAP_SYS_ADMIN CAP_CHOWN``.

    Without ``CAP_DAC_OVERRIDE`` root is just "other" in the run dir (``3770 appliance-boot:appliance``):
    the helper could not create its socket or its mount base there and never served under systemd. It
    gets group ``appliance``. And it no longer relies on ``MountFlags=shared``, which cannot make a
    namespaced unit's mounts reach the supervisord tree: the caller gets a descriptor instead.
    """
    from appliance.boot.privileges import render_tmpfiles

    config = NodeConfig()
    service = unit("appliance-usbmount.service")["Service"]
    assert service.get("User", "root") == "root"
    caps = set(service["CapabilityBoundingSet"].split())
    assert not {"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"} & caps  # the reason for the group
    rule = next(line.split() for line in render_tmpfiles(config).splitlines()
                if line.startswith("d ") and line.split()[1] == config.run_dir)  # fmt: skip
    mode, group = int(rule[2], 8), rule[4]
    groups = {service.get("Group", "root"), *service.get("SupplementaryGroups", "").split()}
    assert group in groups and mode & 0o030 == 0o030, (rule, groups)  # group may create files in the run dir
    assert "MountFlags" not in service


DRIVER_OF_CLASS = {"sd": "sd_mod", "loop": "loop", "nvgpu": "nvgpu"}


def test_every_device_class_a_unit_allows_has_its_driver_loaded_before_the_unit() -> None:
    """Regression (VM tier): ``DeviceAllow=block-sd`` is resolved from /proc/devices when the unit starts.

    On the VM (virtio disks) ``sd_mod`` was not loaded then, so the USB helper's device policy admitted
    no sd device and ``blkid`` read every hot-plugged stick as "no readable file system". Each
    ``block-``/``char-`` class a shipped unit allows must name its driver's ``modprobe@`` unit in both
    ``Wants=`` and ``After=``.
    """
    units = [*SYSTEMD.glob("*.service"), *(SYSTEMD.parent / "bootstrap" / "systemd").glob("*.service")]
    checked = 0
    for path in units:
        lines = [line.strip() for line in path.read_text().splitlines()]
        classes = {line.split("=", 1)[1].split()[0].split("-", 1)[1] for line in lines
                   if line.startswith("DeviceAllow=") and line.split("=", 1)[1].startswith(("block-", "char-"))}  # fmt: skip
        wants = " ".join(line.split("=", 1)[1] for line in lines if line.startswith("Wants="))
        after = " ".join(line.split("=", 1)[1] for line in lines if line.startswith("After="))
        for cls in classes - {"*"}:
            module = f"modprobe@{DRIVER_OF_CLASS[cls]}.service"
            assert module in wants.split() and module in after.split(), (path.name, cls)
            checked += 1
    assert checked >= 3  # sd and loop (USB helper), nvgpu (supervisor)


def test_the_tpm2_opt_in_reaches_only_the_tpm_for_only_the_users_that_open_the_store_key() -> None:
    """``systemd/tpm2`` (installed by ``customize-rootfs.sh --tpm2`` only, docs/image.md §4.4): each drop-in
    adds exactly ``/dev/tpmrm0`` to a unit that opens the store's key, and the sysusers file makes exactly
    boot, the model service and the persistence watchdog members of ``tss`` (not the network-facing
    console, replicate or channel users, which never hold the key); the package keeps them inert."""
    import sys

    sys.path.insert(0, str(SYSTEMD.parent / "image"))
    from deb_layout import destination  # type: ignore[import-not-found]

    tpm2 = SYSTEMD / "tpm2"
    dropins = sorted(tpm2.glob("*.service.d/*.conf"))
    assert {p.parent.name for p in dropins} == {"appliance-boot.service.d", "appliance-supervisor.service.d",
                                                "appliance-firstboot.service.d"}  # fmt: skip
    for p in dropins:
        allowed = [line.split("=", 1)[1] for line in p.read_text().splitlines() if line.startswith("DeviceAllow=")]
        assert allowed == ["/dev/tpmrm0 rw"], p
        assert destination(p.relative_to(SYSTEMD)).startswith("usr/share/appliance/tpm2/"), p
    members = [line.split()[1:] for line in (tpm2 / "sysusers-appliance-tpm2.conf").read_text().splitlines()
               if line.startswith("m ")]  # fmt: skip
    assert sorted(members) == [["appliance-boot", "tss"], ["appliance-persist", "tss"], ["appliance-serve", "tss"]]
    supervisord = (SYSTEMD / "supervisord.conf").read_text()
    for program_user in ("appliance-console", "appliance-replicate", "appliance-channel"):
        assert [program_user, "tss"] not in members
    assert "user=appliance-persist" in supervisord  # the console's privileged side runs as the persist user
