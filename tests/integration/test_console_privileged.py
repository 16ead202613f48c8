"""The console's privileged route with real users and real processes (issue 14, item 1).

The node comes from ``test_privileges`` (shipped users via systemd-sysusers, tmpfiles, real
supervisord, the model served as ``appliance-serve``). This module starts the privileged sides
as their users — ``console actiond --backend persist`` as ``appliance-persist`` (holds the
device key), ``--backend boot`` as ``appliance-boot`` (reaches supervisord, reads the floor),
the USB helper as root — and the web console as ``appliance-console`` with ``--actions
socket``. A technician then rolls back and imports from a stick through the browser-facing
HTTP routes; each side refuses what is not its business. The stick is a FAT image on a loop
device made visible by umockdev (to the console and the helper, which are the processes that
ask udev).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli.localnode import LocalNode
from appliance.cli.main import main
from appliance.console.credentials import Technicians
from appliance.events import read_events
from appliance.node.config import load_config
from appliance.store.store import Store
from tests.console import usb_sticks as sticks
from tests.console.test_console_restart import Browser
from tests.console.test_console_server import free_port, wait_listening
from tests.integration import test_privileges as tp
from tests.integration.test_privileges import INTRUDER, _as, _interpreter

users, node = tp.users, tp.node  # the module-scoped fixtures: shipped users, a booted node under supervisord

pytestmark = [pytest.mark.integration, pytest.mark.root]
TECH, PASSWORD = "dana", "correct horse battery staple"


class Procs:
    def __init__(self, python: str, env: dict[str, str], config: Path) -> None:
        self.python, self.env, self.config = python, env, config
        self.running: list[subprocess.Popen[bytes]] = []
        self.logs = Path(tempfile.mkdtemp(prefix="appliance-privileged-logs-"))

    def start(self, user: str, *argv: str, wrap: list[str] | None = None) -> subprocess.Popen[bytes]:
        pw = pwd.getpwnam(user)
        cmd = [*(wrap or []), self.python, "-m", "appliance.cli.main", *argv]
        log = (self.logs / f"{user}-{len(self.running)}.log").open("wb")
        proc = subprocess.Popen(cmd, user=pw.pw_uid, group=pw.pw_gid, extra_groups=os.getgrouplist(user, pw.pw_gid),
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", **self.env},
                                cwd="/", stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.running.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.running):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.iterdir()))


def as_its_unit_runs_it(name: str = "appliance-usbmount.service") -> list[str]:
    """The USB helper confined as systemd runs it: its own mount namespace, whose mounts never reach the
    caller's (systemd makes them slaves first), and only the unit's capabilities and groups.

    Regression (VM tier): run with every root capability in the caller's namespace, the helper passed here
    while under systemd it could not create its socket (no ``CAP_DAC_OVERRIDE`` in a run dir of
    ``appliance-boot:appliance``), could not reach the caller-owned directory it mounted into, and its
    mounts never reached the persist side (which found an empty directory).
    """
    from tests.unit.test_shipped_config import unit

    service = unit(name)["Service"]
    caps = ",".join(["-all", *(f"+{c.lower().removeprefix('cap_')}" for c in service["CapabilityBoundingSet"].split())])
    groups = ",".join(str(grp.getgrnam(g).gr_gid) for g in service.get("SupplementaryGroups", "").split())
    return ["unshare", "--mount", "--propagation", "slave", "setpriv", "--inh-caps", "-all", "--bounding-set", caps,
            *(["--groups", groups] if groups else ["--clear-groups"]), "--"]  # fmt: skip


def _wait_socket(path: Path, procs: Procs, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs.running):
            raise AssertionError(f"{path} did not appear\n{procs.tail()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stick_image(node: LocalNode) -> Iterator[tuple[Path, str]]:
    """A FAT image with a newer generation of this node's model, signed by the node's own key."""
    if (why := sticks.usb_tools_missing()) is not None:
        pytest.skip(why)
    work = Path(tempfile.mkdtemp(prefix="appliance-stick-src-"))
    try:
        store_copy = work / "store"
        shutil.copytree(node.config.store, store_copy, symlinks=True)
        from appliance import api
        from appliance.signing import SigningKey

        store = Store.open(store_copy, trust_path=node.config.trust_file())
        loaded = api.load(store)
        changed = {k: (v + 1).to(v.dtype) if v.is_floating_point() else v for k, v in loaded.tensors.items()}
        for _ in range(10):  # newer than anything the node has by then (two rollbacks, each after two commits)
            key = SigningKey.from_pem(Path(node.config.signing_key).read_bytes(), "device key")  # root reads it
            result = api.save(store, changed, key, dict(loaded.metadata))
        layout = work / "layout"
        assert main(["export", str(store_copy), "--generation", str(result.generation), str(layout)]) == 0
        image = work / "stick.img"
        sticks.make_fat_image(image, layout)
        loop = sticks.attach(image)
        try:
            yield image, loop
        finally:
            sticks.detach(loop)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def privileged(node: LocalNode, stick_image: tuple[Path, str]) -> Iterator[tuple[str, Procs, str]]:
    python, env = _interpreter()
    config = node.config_path
    shared = Path(tempfile.mkdtemp(prefix="appliance-umockdev-"))
    shared.chmod(0o755)
    device_file = sticks.umockdev_file(shared / "stick.umockdev", stick_image[1])
    device_file.chmod(0o644)
    umock = ["umockdev-run", "-d", str(device_file), "--"]
    state = Path(node.config.run_dir).parent / "console-state"
    Technicians(state).set(TECH, PASSWORD)
    console_pw = pwd.getpwnam("appliance-console")
    for p in (state, *state.rglob("*")):
        os.chown(p, console_pw.pw_uid, console_pw.pw_gid)
    # As at every boot: tmpfiles re-applies owners, modes and ACLs (the boot lock's read ACL for the persist
    # side; test_privileges' first seed ran before tmpfiles, so boot had to replace a lock made by persist).
    subprocess.run(["systemd-tmpfiles", "--create", str(node.root / "tmpfiles.conf")], check=True, timeout=60)
    procs = Procs(python, env, config)
    run = Path(node.config.run_dir)
    try:
        procs.start("appliance-persist", "console", "actiond", "--config", str(config), "--backend", "persist")
        procs.start("appliance-boot", "console", "actiond", "--config", str(config), "--backend", "boot")
        procs.start("root", "console", "usbmount", "--config", str(config), wrap=[*as_its_unit_runs_it(), *umock])
        for name in ("actions.sock", "boot-actions.sock", "usbmount.sock"):
            _wait_socket(run / name, procs)
        port = free_port()
        console = procs.start("appliance-console", "console", "serve", "--config", str(config), "--state-dir",
                              str(state), "--listen", f"127.0.0.1:{port}", "--actions", "socket", wrap=umock)  # fmt: skip
        try:
            wait_listening(port, console, timeout=90)
        except RuntimeError as exc:
            raise AssertionError(procs.tail()) from exc
        yield f"http://127.0.0.1:{port}", procs, stick_image[1]
    finally:
        procs.stop()
        shutil.rmtree(shared, ignore_errors=True)


def _run_job(b: Browser, action: str, form: dict[str, str], query: str = "") -> str:
    status, page = b.get(f"/actions/{action}{query}")
    assert status == 200, page[:2000]
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token, page[:2000]
    req_status, body = b.post(f"/actions/{action}", {"csrf": token.group(1), **form})
    assert req_status == 303, body[:2000]
    job = re.search(r"/jobs/[0-9a-f]+", b.last_location or "")
    assert job, b.last_location
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        _, page = b.get(job.group(0))
        if "Running" not in page:
            return page
        time.sleep(1)
    raise AssertionError("job did not finish")


def _generations(node: LocalNode) -> list[int]:
    return sorted(e["generation"] for e in Store.open(node.config.store).log() if "error" not in e)


_COMMIT = """
import sys
from appliance import api
from appliance.node.config import load_config
from appliance.node.identity import open_node_store
from appliance.signing import SigningKey
config = load_config(sys.argv[1])
store = open_node_store(config)
loaded = api.load(store)
meta = dict(loaded.metadata) | {"note": sys.argv[2]}  # same weights (the canary's expectations hold)
print(api.save(store, dict(loaded.tensors), SigningKey.load(config.signing_key), meta).generation)
"""


def _commit_as_persist(node: LocalNode) -> None:
    """A new generation signed by the device key's owner (what the persistence watchdog does)."""
    python, env = _interpreter()
    done = _as("appliance-persist", [python, "-c", _COMMIT, str(node.config_path), str(time.time())], env,
               timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_console_user_rolls_back_through_the_persist_and_boot_sides(
    node: LocalNode, privileged: tuple[str, Procs, str]
) -> None:
    base, procs, _ = privileged
    for _ in range(2):
        _commit_as_persist(node)
    before = _generations(node)
    target = before[-2]
    b = Browser(base)
    assert b.login(TECH, PASSWORD) == 303
    page = _run_job(b, "rollback", {"generation": str(target)}, f"?generation={target}")
    assert "Done" in page and f"generation {target} re-committed" in page, page[-3000:] + procs.tail()
    assert "serving again" in page, page[-6000:] + procs.tail()
    after = _generations(node)
    assert after[-1] == before[-1] + 1
    new = Store.open(node.config.store).select(after[-1]).opened.verified.manifest
    assert new.metadata.get("rolled_back_from") == target
    status = node.wait_serving(120)
    assert status["generation"] == after[-1], status  # the boot side restarted the service on it
    actions = read_events(node.config.event_log, frozenset({"console.action", "console.action_request"}))
    rollbacks = [e for e in actions if e["fields"].get("action") == "rollback"]
    assert rollbacks and all(e["fields"]["technician"] == TECH for e in rollbacks)
    console_uid = pwd.getpwnam("appliance-console").pw_uid
    assert any(e["event"] == "console.action_request" and e["fields"]["uid"] == console_uid for e in rollbacks)
    assert any(e["fields"].get("action") == "restart-service" and e["fields"]["technician"] == TECH for e in actions)


def test_a_technician_rolls_back_in_chromium_through_the_privileged_sides(
    node: LocalNode, privileged: tuple[str, Procs, str]
) -> None:
    """The same route a technician meets: Debian's Chromium, the console as its user, the device key's owner."""
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed (bootstrap/deps.d)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python API only)")
    base, procs, _ = privileged
    for _ in range(2):
        _commit_as_persist(node)
    before = _generations(node)
    target = before[-2]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        pg = browser.new_context(base_url=base).new_page()
        pg.goto("/login")
        pg.fill("input[name=name]", TECH)
        pg.fill("input[name=password]", PASSWORD)
        pg.click("button[type=submit]")
        pg.goto("/slots")
        pg.click(f"a[href='/actions/rollback?generation={target}']")
        pg.click("button.danger")
        pg.wait_for_selector("p.ok, p.error", timeout=600_000)
        page = pg.content()
        browser.close()
    assert f"generation {target} re-committed" in page, page[-3000:] + procs.tail()
    assert "serving again" in page, page[-6000:] + procs.tail()
    after = _generations(node)
    new = Store.open(node.config.store).select(after[-1]).opened.verified.manifest
    assert after[-1] == before[-1] + 1 and new.metadata.get("rolled_back_from") == target
    try:
        assert node.wait_serving(120)["generation"] == after[-1]
    except Exception as exc:
        raise AssertionError(f"{exc}\n{page[-6000:]}\n{procs.tail()}") from exc


def test_console_user_imports_a_stick_through_the_root_helper(
    node: LocalNode, privileged: tuple[str, Procs, str]
) -> None:
    base, procs, loop = privileged
    before = _generations(node)
    b = Browser(base)
    assert b.login(TECH, PASSWORD) == 303
    status, page = b.get(f"/usb/scan?device={loop}")
    assert status == 200 and "Import…" in page, page[-3000:] + procs.tail()
    generation = int(re.findall(r"generation=(\d+)", page)[0])
    page = _run_job(b, "import", {"device": loop, "generation": str(generation)},
                    f"?device={loop}&generation={generation}")  # fmt: skip
    assert "Done" in page and "imported" in page, page[-3000:] + procs.tail()
    assert _generations(node)[-1] == generation > before[-1]
    assert Store.open(node.config.store).verify().all_ok
    assert "appliance-usb-" not in Path("/proc/self/mountinfo").read_text(), "the stick stays mounted"
    mounts = read_events(node.config.event_log, frozenset({"console.usb_mount"}))
    persist_uid = pwd.getpwnam("appliance-persist").pw_uid
    assert {e["fields"]["op"] for e in mounts} >= {"mount", "unmount"}
    assert all(e["fields"]["uid"] == persist_uid and e["fields"]["mode"] == "read-only" for e in mounts)


_ASK = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect": e.errno})); sys.exit(0)
try:
    s.sendall(sys.argv[2].encode() + b"\\n")
except BrokenPipeError:
    pass  # refused by uid before the request was read: the answer is already waiting
print(s.makefile("rb").readline().decode().strip() or "{}")
"""


def _ask(user: str, sock: Path, line: str) -> dict[str, object]:
    python, env = _interpreter()
    done = _as(user, [python, "-c", _ASK, str(sock), line], env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _req(action: str, *args: str, technician: str = TECH) -> str:
    return json.dumps({"v": 1, "action": action, "args": list(args), "technician": technician})


def test_other_uids_are_refused_by_the_privileged_sides(node: LocalNode, privileged: tuple[str, Procs, str]) -> None:
    run = Path(node.config.run_dir)
    before = _generations(node)
    assert _ask(INTRUDER, run / "actions.sock", _req("verify")).get("connect") is not None  # not even connectable
    for user in ("appliance-serve", "appliance-replicate"):  # in group appliance: connect, then refused by uid
        for sock, action in (
            ("actions.sock", _req("rollback", str(before[0]))),
            ("boot-actions.sock", _req("restart-service")),
        ):
            answer = _ask(user, run / sock, action)
            assert answer["exit_code"] == 84 and "may not" in str(answer["error"]), (user, sock, answer)
    answer = _ask("appliance-serve", run / "usbmount.sock", json.dumps({"op": "mount", "device": "/dev/sda1",
                                                                         "write": True, "path": ""}))  # fmt: skip
    assert answer["exit_code"] == 84
    answer = _ask("appliance-console", run / "usbmount.sock", json.dumps({"op": "mount", "device": "/dev/sda1",
                                                                           "write": False, "path": ""}))  # fmt: skip
    assert answer["exit_code"] == 84, "only the persist side may ask for mounts"
    refused = read_events(node.config.event_log, frozenset({"console.action_refused"}))
    serve_uid = pwd.getpwnam("appliance-serve").pw_uid
    assert any(e["fields"]["uid"] == serve_uid for e in refused)
    assert _generations(node) == before


@pytest.mark.parametrize("line", [
    "not json",
    json.dumps({"v": 1, "action": "rollback", "args": ["1"], "technician": TECH, "config": "/tmp/evil.json"}),
    _req("rollback", "1 --config /tmp/evil.json"),
    _req("rollback", "-1"),
    _req("import", "/etc/passwd", "4"),
    _req("import", "/dev/../etc/shadow", "4"),
    _req("slot-reset", "C"),
    _req("verify", technician="dana\nforged line"),
    _req("shell", "id"),
    _req("restart-service"),  # the boot side's action sent to the persist side
    json.dumps({"v": 2, "action": "verify", "args": [], "technician": TECH}),
])  # fmt: skip
def test_forged_requests_from_the_console_user_are_refused(
    node: LocalNode, privileged: tuple[str, Procs, str], line: str
) -> None:
    before = _generations(node)
    answer = _ask("appliance-console", Path(node.config.run_dir) / "actions.sock", line)
    assert answer["exit_code"] == 84 and "malformed or forged" in str(answer["error"]), answer
    assert _generations(node) == before


def test_a_planted_socket_is_refused_by_the_console_side(node: LocalNode, tmp_path: Path) -> None:
    from appliance.console.actiond import connect
    from appliance.errors import ActionChannelError

    python, env = _interpreter()
    planted_dir = Path(tempfile.mkdtemp(prefix="appliance-planted-"))
    planted_dir.chmod(0o777)
    sock = planted_dir / "actions.sock"
    server = subprocess.Popen(
        [python, "-c", f"import socket,time; s=socket.socket(socket.AF_UNIX); s.bind({str(sock)!r}); s.listen(); "
         "c,_=s.accept(); time.sleep(30)"],
        user=pwd.getpwnam(INTRUDER).pw_uid, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ActionChannelError, match="not by the persist side"):
            connect(sock, "persist", 10)
    finally:
        server.kill()
        server.wait(timeout=30)
        shutil.rmtree(planted_dir, ignore_errors=True)


def test_actions_are_rate_limited_per_caller(node: LocalNode, privileged: tuple[str, Procs, str]) -> None:
    codes = [_ask("appliance-console", Path(node.config.run_dir) / "actions.sock", _req("slot-reset", "A"))["exit_code"]
             for _ in range(9)]  # fmt: skip
    assert 85 in codes, codes  # a BAD-mark reset of a GOOD slot is refused (83) but still costs a token
    assert load_config(node.config_path).console_users == ("appliance-console",)
