"""The recovery console in a real browser: Debian's Chromium driven by Playwright, against the real server.

The server is ``appliance console serve`` (uvicorn) in a child process on a free loopback port.
Screenshots of each page are written to ``out/console-screens/`` (git-ignored) as test
artifacts; docs and the closing note name them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.events import read_events
from tests.console.conftest import PASSWORD, TECH, Node, Stick

CHROMIUM = Path("/usr/bin/chromium")
SCREENS = Path(__file__).resolve().parents[2] / "out" / "console-screens"
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python API only)")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (bootstrap/deps.d)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_console(node: Node, wrapper: list[str]) -> Iterator[str]:
    port = free_port()
    cmd = [*wrapper, sys.executable, "-m", "appliance.cli.main", "console", "serve", "--config", str(node.config_path),
           "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/login", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"console did not start: {proc.stdout.read() if proc.stdout else ''}")  # noqa: B904
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def server(request: pytest.FixtureRequest, node: Node) -> Iterator[str]:
    """The console; for tests that use the ``stick`` fixture, under umockdev so pyudev sees the stick."""
    wrapper: list[str] = []
    if "stick" in request.fixturenames:
        stick = request.getfixturevalue("stick")
        wrapper = ["umockdev-run", "-d", str(stick.device_file), "--"]
    yield from start_console(node, wrapper)


@pytest.fixture
def page(server: str) -> Iterator[object]:
    SCREENS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(base_url=server, accept_downloads=True, viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        yield pg
        browser.close()


def shot(pg: object, name: str) -> None:
    pg.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def log_in(pg: object, password: str = PASSWORD) -> None:
    pg.goto("/login")  # type: ignore[attr-defined]
    pg.fill("input[name=name]", TECH)  # type: ignore[attr-defined]
    pg.fill("input[name=password]", password)  # type: ignore[attr-defined]
    pg.click("button[type=submit]")  # type: ignore[attr-defined]


def test_login_and_every_page_renders(page: object, node: Node) -> None:
    pg = page
    pg.goto("/login")  # type: ignore[attr-defined]
    shot(pg, "01-login")
    log_in(pg)
    assert pg.locator("h1").inner_text() == "Overview"  # type: ignore[attr-defined]
    assert "appliance.models.demo:build" in pg.content()  # type: ignore[attr-defined]
    shot(pg, "02-overview")
    pg.click("text=Slots")  # type: ignore[attr-defined]
    assert pg.locator("section.slot").count() == 2  # type: ignore[attr-defined]
    shot(pg, "03-slots")
    pg.click("header >> text=Events")  # type: ignore[attr-defined]
    pg.select_option("select[name=component]", "console")  # type: ignore[attr-defined]
    pg.click("text=Filter")  # type: ignore[attr-defined]
    assert "console.login" in pg.content()  # type: ignore[attr-defined]
    shot(pg, "04-events")
    pg.click("header >> text=Actions")  # type: ignore[attr-defined]
    shot(pg, "05-actions")


def test_login_is_locked_out_after_repeated_failures(page: object) -> None:
    pg = page
    for _ in range(5):
        log_in(pg, "not the password")
        assert "Wrong name or password" in pg.content()  # type: ignore[attr-defined]
    log_in(pg)
    assert "Too many failed logins" in pg.content()  # type: ignore[attr-defined]
    shot(pg, "06-lockout")


def test_state_change_without_csrf_token_is_refused(page: object, node: Node) -> None:
    pg = page
    log_in(pg)
    pg.goto("/actions/slot-reset?slot=A")  # type: ignore[attr-defined]
    pg.goto("/actions/verify")  # type: ignore[attr-defined]
    pg.eval_on_selector("main input[name=csrf]", "e => e.value = 'forged'")  # type: ignore[attr-defined]
    pg.click("button.danger")  # type: ignore[attr-defined]
    assert "CSRF" in pg.content()  # type: ignore[attr-defined]
    shot(pg, "07-csrf-refused")
    assert not read_events(node.config.event_log, frozenset({"console.action"}))


def test_rollback_flow_and_diagnostics_download(page: object, node: Node, tmp_path: Path) -> None:
    pg = page
    log_in(pg)
    pg.goto("/slots")  # type: ignore[attr-defined]
    pg.click("a[href='/actions/rollback?generation=2']")  # type: ignore[attr-defined]
    assert "committed again as new generation 4" in pg.content()  # type: ignore[attr-defined]
    shot(pg, "08-rollback-confirm")
    pg.click("button.danger")  # type: ignore[attr-defined]
    pg.wait_for_selector("p.ok, p.error", timeout=180_000)  # type: ignore[attr-defined]
    shot(pg, "09-rollback-done")
    assert pg.locator("p.ok").count() == 1, pg.content()  # type: ignore[attr-defined]
    acted = read_events(node.config.event_log, frozenset({"console.action"}))
    assert any(e["fields"].get("new_generation") == 4 and e["fields"]["technician"] == TECH for e in acted)
    pg.goto("/actions/diagnostics")  # type: ignore[attr-defined]
    pg.click("button.danger")  # type: ignore[attr-defined]
    pg.wait_for_selector("#download, p.error", timeout=180_000)  # type: ignore[attr-defined]
    shot(pg, "10-diagnostics")
    with pg.expect_download() as info:  # type: ignore[attr-defined]
        pg.click("#download")  # type: ignore[attr-defined]
    target = tmp_path / "bundle.tar.gz"
    info.value.save_as(str(target))
    with tarfile.open(target) as tar:
        assert any(m.name.endswith("events.jsonl") for m in tar.getmembers())
    assert os.path.getsize(target) > 0


def test_usb_import_flow_with_progress(page: object, node: Node, stick: Stick) -> None:
    pg = page
    log_in(pg)
    pg.click("header >> text=USB")  # type: ignore[attr-defined]
    assert stick.loop in pg.content()  # type: ignore[attr-defined]
    shot(pg, "11-usb-sticks")
    pg.click("text=List checkpoints")  # type: ignore[attr-defined]
    assert pg.locator("text=Import…").count() == 1  # type: ignore[attr-defined]
    shot(pg, "12-usb-checkpoints")
    pg.click("text=Import…")  # type: ignore[attr-defined]
    assert "mounted read-only" in pg.content()  # type: ignore[attr-defined]
    shot(pg, "13-usb-import-confirm")
    pg.click("button.danger")  # type: ignore[attr-defined]
    saw_progress = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            html = pg.content()  # type: ignore[attr-defined]
        except playwright_api.Error:  # the job page is refreshing itself
            time.sleep(0.1)
            continue
        if 'id="import-progress"' in html and not saw_progress:
            saw_progress = True
            shot(pg, "14-usb-import-progress")
        if 'class="ok"' in html or 'class="error"' in html:
            break
        time.sleep(0.2)
    pg.wait_for_load_state()  # type: ignore[attr-defined]
    shot(pg, "15-usb-import-done")
    assert "imported into slot" in pg.content(), pg.content()  # type: ignore[attr-defined]
    assert saw_progress or "(every blob verified)" in pg.content()  # type: ignore[attr-defined]
    from appliance.store.store import Store

    assert 4 in {e["generation"] for e in Store.open(node.config.store).log()}
    event = read_events(node.config.event_log, frozenset({"console.action"}))[-1]
    assert event["fields"]["action"] == "import" and event["fields"]["technician"] == TECH
