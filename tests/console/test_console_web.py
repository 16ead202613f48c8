"""The web console over HTTP (Starlette's TestClient against the real app): the attacks it stops and its pages.

Actions run through the real ``CliChannel`` (``appliance tech ...`` in a child process), the same
path the served console uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.console.app import ConsoleSettings, create_app
from appliance.console.credentials import SetupCode, read_setup_code
from appliance.events import read_events
from appliance.format import console as rules
from tests.console.conftest import PASSWORD, TECH, Node

pytestmark = pytest.mark.integration
BASE = "http://127.0.0.1:8471"
ORIGIN = {"Origin": BASE}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(node: Node, clock: Clock | None = None, **kw: object) -> TestClient:
    settings = ConsoleSettings(config_path=node.config_path, state_dir=node.state_dir, **kw)  # type: ignore[arg-type]
    app = create_app(settings, clock=clock or Clock())
    return TestClient(app, base_url=BASE)


def csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def login(c: TestClient, name: str = TECH, password: str = PASSWORD) -> object:
    token = csrf(c.get("/login").text)
    return c.post("/login", data={"csrf": token, "name": name, "password": password}, headers=ORIGIN,
                  follow_redirects=False)  # fmt: skip


def test_login_page_then_overview_shows_the_store(node: Node) -> None:
    c = client(node)
    assert c.get("/", follow_redirects=False).headers["location"] == "/login"
    r = login(c)
    assert r.status_code == 303 and r.headers["location"] == "/"  # type: ignore[attr-defined]
    page = c.get("/").text
    assert "appliance.models.demo:build" in page and "Newest generation" in page
    logins = read_events(node.config.event_log, frozenset({"console.login"}))
    assert logins[-1]["fields"]["technician"] == TECH


def test_session_cookie_is_httponly_samesite_strict_and_rotated_at_login(node: Node) -> None:
    c = client(node)
    pre = c.get("/login").headers["set-cookie"]
    assert "HttpOnly" in pre and "SameSite=strict" in pre.replace("Strict", "strict") and "Secure" not in pre
    r = login(c)
    post = r.headers["set-cookie"]  # type: ignore[attr-defined]
    assert pre.split(";")[0] != post.split(";")[0], "session id must change at login (fixation)"
    tls = client(node, tls=True)
    assert "Secure" in tls.get("/login").headers["set-cookie"]


def test_no_default_password_first_technician_needs_the_one_time_code(node: Node, tmp_path: Path) -> None:
    fresh = Node(node.config, node.config_path, tmp_path / "empty-state")
    c = client(fresh)
    assert c.get("/login", follow_redirects=False).headers["location"] == "/setup"
    assert login(c, "admin", "admin").status_code in (303, 200, 401)  # type: ignore[attr-defined]
    assert c.get("/", follow_redirects=False).headers["location"] == "/login"  # nothing logged in
    code = read_setup_code(fresh.state_dir)
    assert code and (fresh.state_dir / "setup-code").stat().st_mode & 0o777 == 0o600
    page = c.get("/setup").text
    form = {"csrf": csrf(page), "code": "0000-0000-0000-0000", "name": "bob", "password": "x" * 14, "confirm": "x" * 14}
    assert c.post("/setup", data=form, headers=ORIGIN).status_code == 401
    form["code"] = code
    assert c.post("/setup", data=form, headers=ORIGIN, follow_redirects=False).status_code == 303
    assert read_setup_code(fresh.state_dir) is None, "the code is used up"
    assert login(c, "bob", "x" * 14).headers["location"] == "/"  # type: ignore[attr-defined]
    assert not SetupCode(fresh.state_dir).load()


def test_login_is_locked_out_after_repeated_failures(node: Node) -> None:
    clock = Clock()
    c = client(node, clock)
    for _ in range(rules.LockoutPolicy().max_failures):
        assert login(c, TECH, "wrong password!!").status_code == 401  # type: ignore[attr-defined]
    r = login(c)  # the right password no longer helps
    assert r.status_code == 429 and "Try again in" in r.text  # type: ignore[attr-defined]
    locked = read_events(node.config.event_log, frozenset({"console.locked_out"}))
    assert {e["fields"]["key"] for e in locked} == {f"name:{TECH}", "client:testclient"}
    clock.now += rules.LockoutPolicy().lockout_s + 1
    assert login(c).headers["location"] == "/"  # type: ignore[attr-defined]


def test_state_change_without_csrf_token_is_refused(node: Node) -> None:
    c = client(node)
    login(c)
    r = c.post("/actions/slot-reset", data={"slot": "A"}, headers=ORIGIN)
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post("/actions/verify", data={"csrf": "forged"}, headers=ORIGIN)
    assert r.status_code == 403
    assert not read_events(node.config.event_log, frozenset({"console.action"}))


def test_foreign_origin_is_refused(node: Node) -> None:
    c = client(node)
    login(c)
    token = csrf(c.get("/actions/verify").text)
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}, {}):
        r = c.post("/actions/verify", data={"csrf": token}, headers=headers)
        assert r.status_code == 403 and "foreign origin" in r.text, headers
    assert not read_events(node.config.event_log, frozenset({"console.action"}))


def test_dns_rebinding_host_is_refused(node: Node) -> None:
    c = client(node)
    r = c.get("/login", headers={"Host": "attacker.example"})
    assert r.status_code == 400
    assert c.get("/metrics", headers={"Host": "rebind.attacker.example:8471"}).status_code == 400
    assert c.get("/login", headers={"Host": "127.0.0.1:8471"}).status_code == 200


def test_security_headers_forbid_framing_and_inline_script(node: Node) -> None:
    r = client(node).get("/login")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert "cdn" not in r.text.lower() and "https://" not in r.text


def test_events_page_filters_by_component_and_severity_newest_first(node: Node) -> None:
    c = client(node)
    login(c)
    for _ in range(2):
        login(c, TECH, "wrong password!!")
    page = c.get("/events?component=console&severity=warning").text
    rows = re.findall(r"<tr class=\"prio-(\d)\"><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>", page)
    assert rows and all(comp == "console" and int(p) <= 4 for p, _, comp, _ in rows)
    times = [ts for _, ts, _, _ in rows]
    assert times == sorted(times, reverse=True)


def test_slots_page_lists_every_generation_with_its_verification(node: Node) -> None:
    c = client(node)
    login(c)
    page = c.get("/slots").text
    for gen in (1, 2, 3):
        assert f"<td>{gen}</td>" in page
    assert 'href="/actions/rollback?generation=2"' in page


def test_rollback_below_the_floor_is_refused(node: Node) -> None:
    from appliance.node.floor import open_floor

    open_floor(node.config).raise_to(3)
    c = client(node)
    login(c)
    page = c.get("/actions/rollback?generation=2").text
    assert "below the anti-rollback floor 3" in page and "Confirm:" not in page
    token = csrf(c.get("/actions/verify").text)
    r = c.post("/actions/rollback", data={"csrf": token, "generation": "2"}, headers=ORIGIN)
    assert r.status_code == 409 and not read_events(node.config.event_log, frozenset({"console.action"}))


def test_diagnostics_bundle_never_contains_keys_or_weights(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "diag.tar.gz"
    cmd = [sys.executable, "-m", "appliance.cli.main", "tech", "diagnostics", "--config", str(node.config_path),
           "--out", str(out), "--technician", TECH, "--json"]  # fmt: skip
    assert subprocess.run(cmd, capture_output=True, check=False, timeout=300).returncode == 0
    key_pem = Path(node.config.signing_key).read_bytes()
    frames = [p.read_bytes() for p in Path(node.config.store).rglob("*") if p.is_file() and p.stat().st_size > 4096]
    with tarfile.open(out) as tar:
        names = sorted(Path(m.name).name for m in tar.getmembers())
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert names == sorted(["events.jsonl", "boot-status.json", "status.json", "log.json", "verify.json",
                            "scrub.json", "report.json", "versions.json", "journal.txt"])  # fmt: skip
    everything = b"".join(blobs.values())
    assert b"PRIVATE KEY" not in everything and key_pem[40:80] not in everything
    assert frames and not any(f[1000:1064] in everything for f in frames), "a stored frame leaked into the bundle"
    versions = json.loads(next(v for k, v in blobs.items() if k.endswith("versions.json")))
    assert versions["torch"] and versions["appliance"]
    acted = read_events(node.config.event_log, frozenset({"console.action"}))
    assert acted[-1]["fields"]["technician"] == TECH and acted[-1]["fields"]["action"] == "diagnostics"


def test_metrics_endpoint_exposes_slot_states_and_counters(node: Node) -> None:
    text = client(node).get("/metrics").text
    assert 'appliance_slot_state{slot="A",state="UNKNOWN"} 1.0' in text
    assert "appliance_commits_total" in text and "appliance_fallbacks_total" in text


def test_overview_and_metrics_take_event_data_from_fields_and_skip_planted_lines(node: Node) -> None:
    """Every reader of the event log reads an event's data under ``fields`` (trial 4, N5)."""
    from appliance.events import EventLog

    with open(node.config.event_log, "a", encoding="utf-8") as f:  # planted lines: no fields, fields not an object
        f.write(json.dumps({"event": "boot.serving", "ts": "x", "stages": {"restore_s": 9}}) + "\n")
        f.write(json.dumps({"event": "persist.committed", "fields": "x", "seconds": 7}) + "\n")
    EventLog(node.config.event_log, "service", journal=None).emit(
        "restore.finished", slot="A", generation=3, raw_bytes=4321, seconds=0.0421, stats={}
    )
    EventLog(node.config.event_log, "boot", journal=None).emit(
        "boot.serving", slot="A", generation=3, total_s=0.5, stages={"restore_s": 0.0421}, restore=None, fallbacks=0
    )
    text = client(node).get("/metrics").text
    assert 'appliance_restore_stage_seconds{stage="restore"} 0.0421' in text
    c = client(node)
    login(c)
    page = c.get("/").text
    assert '<td class="num">4321</td><td class="num">0.0421</td>' in page and "boot to serving 0.5 s" in page


def test_web_console_process_does_not_import_torch_or_the_signing_key(node: Node) -> None:
    code = (
        "import sys; from appliance.console.app import ConsoleSettings, create_app; "
        f"create_app(ConsoleSettings(config_path=__import__('pathlib').Path({str(node.config_path)!r}), "
        f"state_dir=__import__('pathlib').Path({str(node.state_dir)!r}))); "
        "bad = [m for m in ('torch', 'appliance.api', 'appliance.persist.committer') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_technician_provisioned_at_first_boot_can_log_in(node: Node, tmp_path: Path) -> None:
    """First boot writes /etc/appliance/technicians.json as a list of {name, password_hash} (docs/design.md §12)."""
    from argon2 import PasswordHasher

    provisioned = tmp_path / "etc-technicians.json"
    entry = {"name": "field_ana", "password_hash": PasswordHasher().hash("provisioned secret 1")}
    provisioned.write_text(json.dumps({"format": "appliance.technicians", "version": 1, "technicians": [entry]}))
    fresh = Node(node.config, node.config_path, tmp_path / "empty-state")
    c = client(fresh, provisioned_technicians=provisioned)
    assert c.get("/login", follow_redirects=False).status_code == 200, "no setup code while a technician exists"
    assert login(c, "field_ana", "provisioned secret 1").headers["location"] == "/"  # type: ignore[attr-defined]
    assert login(client(fresh, provisioned_technicians=provisioned), "field_ana", "wrong").status_code == 401  # type: ignore[attr-defined]


def test_overview_shows_the_served_checkpoint_with_signer_and_lineage(node: Node) -> None:
    from appliance.format.handoff import Admit
    from tests.integration.node_fixtures import handoff

    h = handoff(node.config, Admit.SELF)
    c = client(node)
    login(c)
    page = c.get("/").text
    assert h.manifest_digest in page and "admitted by self" in page
    from appliance.store.store import Store

    (keyid,) = [k.keyid for k in Store.open(node.config.store).trust.keys]
    assert f"<code>{keyid}</code>" in page and "none (full checkpoint)" in page and "Vendor provenance" in page


def test_metrics_show_replication_lag_from_the_replicators_queue(node: Node, tmp_path: Path) -> None:
    state = tmp_path / "replicate"
    state.mkdir()
    (state / "replication.json").write_text(json.dumps({
        "format": "appliance.replication", "version": 1, "device": "node-1",
        "replicated": {"generation": 1, "manifest_digest": "0" * 64, "sequence": 1, "at": "2026-01-01T00:00:00Z"},
        "pending_generation": 3, "attempts": 2, "last_error": "timeout", "next_attempt_at": None, "uploads": 1,
        "blobs_uploaded": 40, "blobs_skipped": 0, "bytes_uploaded": 1000, "failures": 2, "history": [],
    }))  # fmt: skip
    remote = tmp_path / "remote.json"
    remote.write_text(json.dumps({"format": "appliance.remote", "version": 1, "endpoint": "http://127.0.0.1:9",
                                  "bucket": "fleet", "device": "node-1", "credentials": "creds.json",
                                  "state_dir": str(state)}))  # fmt: skip
    text = client(node, remote=remote).get("/metrics").text
    assert "appliance_replication_lag_generations 2.0" in text  # newest 3, replicated 1
    assert "appliance_replication_failures_total 2.0" in text
    assert "appliance_replication_lag_generations" not in client(node).get("/metrics").text
