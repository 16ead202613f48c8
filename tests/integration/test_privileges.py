"""Privilege separation with real users, real supervisord and the real service (issue 10, item 3).

The node's users come from the shipped ``systemd/sysusers.d/appliance.conf`` (applied with the
real ``systemd-sysusers``), owners and modes from ``node-init --users`` (the same tmpfiles rules
as production, applied with the real ``systemd-tmpfiles``), and a local intruder is made with
``useradd``. supervisord runs as root and starts each program as its user; boot runs as
``appliance-boot``. Each test then acts as one of those users and tries what the threat model
(docs/design.md §7.1) says it cannot do. Needs root; skips (saying why) without it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.boot.privileges import GROUP, USERS
from appliance.cli.localnode import LocalNode

pytestmark = [pytest.mark.integration, pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
SYSUSERS = REPO / "systemd" / "sysusers.d" / "appliance.conf"
INTRUDER = "appliance-intruder"

if os.geteuid() != 0:
    pytest.skip("needs root: creates users and runs programs as them", allow_module_level=True)
for _tool in ("systemd-sysusers", "systemd-tmpfiles", "useradd"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} is not installed (bootstrap/deps.d/20-privileges.sh)", allow_module_level=True)


def _reachable_by_others(path: Path) -> bool:
    """Whether every directory above ``path`` lets others through and the file is readable."""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents) and bool(path.stat().st_mode & stat.S_IROTH)


def _interpreter() -> tuple[str, dict[str, str]]:
    """An interpreter the node's users can run, with this checkout and its packages importable."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {"PYTHONPATH": f"{REPO}:{site}"}
    if _reachable_by_others(Path(sys.executable)):
        return sys.executable, env
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if system.exists():
        return str(system), env
    pytest.skip(f"{sys.executable} is not reachable by other users and there is no {system}")


def _existing(names: tuple[str, ...], db: str) -> set[str]:
    out = subprocess.run(["getent", db, *names], capture_output=True, text=True, check=False).stdout
    return {line.split(":")[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, pwd.struct_passwd]]:
    """The shipped users (systemd-sysusers) and an intruder (useradd); removed again if this made them."""
    names = (*USERS, INTRUDER)
    had_users, had_groups = _existing(names, "passwd"), _existing((GROUP, *names), "group")
    subprocess.run(["systemd-sysusers", str(SYSUSERS)], check=True, capture_output=True, timeout=60)
    if INTRUDER not in had_users:
        subprocess.run(["useradd", "--system", "--no-create-home", INTRUDER], check=True, timeout=60)
    try:
        yield {n: pwd.getpwnam(n) for n in names}
    finally:
        for name in set(names) - had_users:
            subprocess.run(["userdel", name], capture_output=True, check=False, timeout=60)
        for name in {GROUP, *names} - had_groups:
            subprocess.run(["groupdel", name], capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def node(users: dict[str, pwd.struct_passwd]) -> Iterator[LocalNode]:
    python, env = _interpreter()
    for name in ("appliance-serve", "appliance-boot"):  # the users must be able to import us
        probe = _as(name, [python, "-c", "import appliance.cli.main, zstandard"], env)
        if probe.returncode != 0:
            pytest.skip(f"{name} cannot import appliance with {python}: {probe.stderr[-300:]}")
    base = Path(tempfile.mkdtemp(prefix="appliance-users-"))
    base.chmod(0o711)
    env_args = {"python": python}  # supervisord passes its environment (PYTHONPATH) to the programs
    node = LocalNode.create(base / "n", env=env, users=True, frame_size=65536, persist_interval=3600, **env_args)
    cli = [python, "-m", "appliance.cli.main"]
    seeded = _as("appliance-persist", [*cli, "seed", "--config", str(node.config_path), "--json"], env, timeout=300)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr  # only the key's owner can sign
    tmpfiles = node.root / "tmpfiles.conf"
    subprocess.run(["systemd-tmpfiles", "--create", str(tmpfiles)], check=True, timeout=60)  # as at every boot
    node.start()
    try:
        done = _as("appliance-boot", [*cli, "boot", "--config", str(node.config_path), "--json"], env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        node.wait_serving(120)
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def _as(
    user: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    pw = pwd.getpwnam(user)
    return subprocess.run(
        argv,
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(user, pw.pw_gid),
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **(env or {})},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _try(user: str, code: str) -> str:
    """Run ``code`` as ``user``; it prints OK or the errno name it met."""
    wrapped = f"import errno,os,socket,sys\ntry:\n    {code}\n    print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
    done = _as(user, ["/usr/bin/python3", "-c", wrapped])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_programs_run_as_their_users(node: LocalNode, users: dict[str, pwd.struct_passwd]) -> None:
    control = node.control()
    assert _uid_of(control.info("model").pid) == users["appliance-serve"].pw_uid
    persist = control.info("persist")
    assert persist.state == "RUNNING"  # it loaded the 0400 device key as its owner
    assert _uid_of(persist.pid) == users["appliance-persist"].pw_uid


def test_service_user_cannot_read_the_signing_key(node: LocalNode) -> None:
    key = node.config.signing_key
    assert _try("appliance-serve", f"open({key!r}, 'rb').read()") == "EACCES"
    assert _try("appliance-persist", f"open({key!r}, 'rb').read()") == "OK"
    st = os.stat(key)
    assert (pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)) == ("appliance-persist", 0o400)


def test_service_user_cannot_write_store_trust_or_floor(node: LocalNode) -> None:
    store = Path(node.config.store)
    frame = next((store / "A" / "frames").iterdir())
    assert _try("appliance-serve", f"open({str(frame)!r}, 'rb').read(1)") == "OK"  # it restores from them
    for target in (store / "A" / "frames" / "planted", store / "A" / "state.json.new", store / "trust.json.new"):
        assert _try("appliance-serve", f"open({str(target)!r}, 'xb')") == "EACCES", target
    assert _try("appliance-serve", f"open({str(store / 'trust.json')!r}, 'ab')") == "EACCES"
    assert _try("appliance-serve", f"open({node.config.floor_file!r}, 'rb')") == "EACCES"
    assert _try("appliance-boot", f"open({node.config.floor_file!r}, 'rb').read()") == "OK"


def test_service_user_cannot_control_supervisord(node: LocalNode) -> None:
    sock = node.config.supervisor_socket
    connect = f"s=socket.socket(socket.AF_UNIX); s.connect({sock!r})"
    assert _try("appliance-serve", connect) in ("EACCES", "EPERM")
    assert _try("appliance-persist", connect) in ("EACCES", "EPERM")
    assert _try("appliance-boot", connect) == "OK"


def test_local_user_cannot_read_weights_or_hold_the_boot_lock(node: LocalNode) -> None:
    store = Path(node.config.store)
    frame = next((store / "A" / "frames").iterdir())
    assert _try(INTRUDER, f"open({str(frame)!r}, 'rb')") == "EACCES"
    lock = Path(node.config.run_dir) / "boot.lock"
    assert _try(INTRUDER, f"open({str(lock)!r}, 'rb')") == "EACCES"
    assert _try("appliance-serve", f"open({str(lock)!r}, 'rb')") == "EACCES"
    assert _try(INTRUDER, f"open({node.config.event_log!r}, 'rb')") == "EACCES"


def test_store_files_keep_group_read_and_no_other_bits(node: LocalNode) -> None:
    for path in Path(node.config.store).rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o007, f"{path} is {mode:04o}"
        assert path.group() == "appliance", f"{path} belongs to group {path.group()}"


def test_boot_lock_and_run_dir_modes(node: LocalNode) -> None:
    run = Path(node.config.run_dir)
    assert stat.S_IMODE(run.stat().st_mode) == 0o3770 and run.owner() == "appliance-boot"
    lock = (run / "boot.lock").stat()
    assert pwd.getpwuid(lock.st_uid).pw_name == "appliance-boot" and not stat.S_IMODE(lock.st_mode) & 0o007


def test_served_model_answers_as_the_service_user(node: LocalNode) -> None:
    status, body = node.call("/ready")
    assert status == 200, body
    with socket.create_connection(("127.0.0.1", node.config.port), timeout=5):
        pass


_METRICS = (
    "import http.client,socket,sys\n"
    "class C(http.client.HTTPConnection):\n"
    "    def connect(self):\n"
    "        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])\n"
    "c = C('localhost', timeout=10)\n"
    "try:\n"
    "    c.request('GET', '/v1/metrics'); print(c.getresponse().status)\n"
    "except OSError as e:\n"
    "    print('errno', e.errno)\n"
)


def test_service_metrics_need_the_metrics_role(node: LocalNode) -> None:
    """Metrics live on the control socket (design §7.1.1): the console's user may read them, others may not."""
    sock = node.config.control_socket
    assert _as("appliance-console", ["/usr/bin/python3", "-c", _METRICS, sock]).stdout.strip() == "200"
    assert _as("appliance-persist", ["/usr/bin/python3", "-c", _METRICS, sock]).stdout.strip() == "200"
    assert _as("appliance-replicate", ["/usr/bin/python3", "-c", _METRICS, sock]).stdout.strip() == "403"
    assert _as(INTRUDER, ["/usr/bin/python3", "-c", _METRICS, sock]).stdout.strip().startswith("errno")


def test_the_watchdog_commits_an_export_the_service_wrote_as_its_own_user(node: LocalNode) -> None:
    """Regression (VM tier): safetensors creates its files 0600, so persist could read no export.

    The service (``appliance-serve``) adapts and exports; the watchdog (``appliance-persist``, group
    ``appliance``) must read the file, check its receipt and commit it, not quarantine it.
    """
    import http.client
    import json
    import time

    from appliance.events import read_events

    class Unix(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(node.config.control_socket)

    def post(route: str, body: object) -> dict[str, object]:
        conn = Unix("localhost", timeout=120)
        conn.request("POST", route, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status == 200, data
        return data  # type: ignore[no-any-return]

    post("/v1/adapt", {"inputs": [[0.1] * 16] * 4, "targets": [[0.2] * 4] * 4})  # root holds every role
    name = str(post("/v1/export", {})["file"])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        seen = read_events(node.config.event_log, frozenset({"persist.committed", "outbox.rejected"}))
        mine = [e for e in seen if e["fields"].get("file") == name]
        assert not any(e["event"] == "outbox.rejected" for e in mine), f"the watchdog refused the export: {mine}"
        if mine:
            return
        time.sleep(1)
    raise AssertionError(f"no commit of {name} within 180 s")


def test_boot_still_records_slot_states_after_tmpfiles_ran_again(node: LocalNode) -> None:
    """Regression (VM tier): systemd-tmpfiles runs at every boot; its chmod of the slot roots reset the
    ACL mask to r-x, so boot could no longer write state.json (attempts, GOOD, BAD) from the 2nd run on."""
    for _ in range(2):
        subprocess.run(["systemd-tmpfiles", "--create", str(node.root / "tmpfiles.conf")], check=True, timeout=60)
    for slot in ("A", "B"):
        probe = Path(node.config.store) / slot / ".probe"
        assert _try("appliance-boot", f"open({str(probe)!r}, 'w').close(); os.unlink({str(probe)!r})") == "OK", slot
        assert _try("appliance-serve", f"open({str(probe)!r}, 'w')") == "EACCES", slot
