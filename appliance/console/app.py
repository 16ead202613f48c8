"""The web console: FastAPI routes, server-rendered Jinja2 pages, request checks on every request.

Owns: ``ConsoleSettings`` and ``create_app`` — Host allowlist (DNS rebinding), Origin/Referer
check and CSRF token on every state change, security headers (CSP without inline script,
frame-ancestors none, no-store), login with throttling and lockout, first-technician setup
through the one-time code, the pages (Overview, Slots, Events, action confirmation, job
progress) and the downloads (diagnostics bundle, metrics). Every asset is packaged
(``templates/``, ``static/``); nothing loads from a CDN. Does not own the rules
(``appliance.format.console``), credentials, actions or read models (sibling modules).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from appliance.console import metrics, readmodel
from appliance.console.actions import ActionChannel, CliChannel, Jobs
from appliance.console.credentials import SetupCode, Technicians, constant_eq
from appliance.console.security import COOKIE, DB_NAME, Session, Sessions, StateDb, Throttle
from appliance.errors import ApplianceError, StorageError, UsageError
from appliance.events import EventLog
from appliance.format import console as rules
from appliance.node.config import NodeConfig, load_config

HERE = Path(__file__).parent
FORM_MAX = 16 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BUNDLE_RE = re.compile(r"^diagnostics-[0-9a-f]{16}\.tar\.gz$")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Handler = Callable[[Request], Awaitable[Response]]
CsrfCheck = Callable[[Session | None, dict[str, str]], bool]
Refuse = Callable[[Request, Session | None], Response]
ClientOf = Callable[[Request], str]


@dataclass(frozen=True)
class ConsoleSettings:
    config_path: Path
    state_dir: Path
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    tls: bool = False
    lockout: rules.LockoutPolicy = field(default_factory=rules.LockoutPolicy)
    session: rules.SessionPolicy = field(default_factory=rules.SessionPolicy)
    scrub_seconds: float = 60.0
    provisioned_technicians: Path | None = None  # first boot's technicians.json (read-only), if any
    remote: Path | None = None  # remote.json of the replicator, for the replication metrics


class Console:
    """Everything one console process holds: settings, sessions, throttle, credentials, jobs."""

    def __init__(self, settings: ConsoleSettings, channel: ActionChannel | None, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.config: NodeConfig = load_config(settings.config_path)
        self.state = StateDb(settings.state_dir / DB_NAME)  # survives a restart (security.py)
        self.sessions = Sessions(settings.session, clock, self.state)
        self.throttle = Throttle(settings.lockout, clock, self.state)
        self.technicians = Technicians(settings.state_dir, settings.provisioned_technicians)
        self.setup = SetupCode(settings.state_dir)
        self.jobs = Jobs(channel or CliChannel(settings.config_path))
        self.events = EventLog(self.config.event_log, "console")
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        if self.technicians.empty() and not self.setup.load():
            self.setup.issue()

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", secure=self.settings.tls, path="/")

    def page(self, request: Request, name: str, session: Session | None, status: int = 200, **ctx: Any) -> Response:
        ctx |= {"session": session, "technician": session.technician if session else None}
        return self.templates.TemplateResponse(request, name, ctx, status_code=status)

    def floor(self) -> int | None:
        from appliance.console.actiond import read_floor

        return read_floor(self.config)


async def read_form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > FORM_MAX:
        raise UsageError("form too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=32).items()}


def create_app(settings: ConsoleSettings, channel: ActionChannel | None = None,
               clock: Callable[[], float] = time.time) -> FastAPI:  # fmt: skip
    con = Console(settings, channel, clock)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = con
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def checks(request: Request, call_next: Handler) -> Response:
        if not rules.host_allowed(request.headers.get("host"), settings.allowed_hosts):
            response: Response = PlainTextResponse("host not allowed", status_code=400)
        elif request.method not in SAFE_METHODS and not rules.origin_allowed(
            request.headers.get("origin"), request.headers.get("referer"), settings.allowed_hosts
        ):
            response = PlainTextResponse("request from a foreign origin refused", status_code=403)
        else:
            response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def csrf_ok(session: Session | None, form: dict[str, str]) -> bool:
        return session is not None and constant_eq(form.get("csrf", ""), session.csrf)

    def refused(request: Request, session: Session | None) -> Response:
        problem = "The form's security token is missing or stale (CSRF). Nothing was changed."
        return con.page(request, "error.html", session, 403, title="Refused", problem=problem)

    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    register_auth(app, con, csrf_ok, refused, client)
    register_pages(app, con, csrf_ok, refused)
    return app


def register_auth(app: FastAPI, con: Console, csrf_ok: CsrfCheck, refused: Refuse, client: ClientOf) -> None:
    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        if con.technicians.empty() and con.setup.active:
            return RedirectResponse("/setup", status_code=303)
        session = con.session(request) or con.sessions.new()
        response = con.page(request, "login.html", session, error=None)
        con.set_cookie(response, session)
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        session, form = con.session(request), await read_form(request)
        if not csrf_ok(session, form):
            return refused(request, session)
        name, keys = form.get("name", "")[:64], (f"name:{form.get('name', '')[:64]}", f"client:{client(request)}")
        wait = con.throttle.retry_after(*keys)
        if wait > 0:
            return con.page(request, "login.html", session, 429, error=f"Too many failed logins. Try again in "
                            f"{int(wait) + 1} s.")  # fmt: skip
        if con.technicians.verify(name, form.get("password", "")):
            con.throttle.succeeded(*keys)
            con.sessions.drop(session.id if session else None)
            fresh = con.sessions.new(name)  # a new id at login (session fixation)
            con.events.emit("console.login", technician=name, client=client(request))
            response = RedirectResponse("/", status_code=303)
            con.set_cookie(response, fresh)
            return response
        for key in con.throttle.failed(*keys):
            con.events.emit("console.locked_out", key=key, seconds=con.settings.lockout.lockout_s)
        con.events.emit("console.login_failed", technician=name, client=client(request))
        return con.page(request, "login.html", session, 401, error="Wrong name or password.")

    @app.get("/setup", response_class=HTMLResponse)
    async def setup_form(request: Request) -> Response:
        if not con.technicians.empty():
            return RedirectResponse("/login", status_code=303)
        session = con.session(request) or con.sessions.new()
        response = con.page(request, "setup.html", session, error=None)
        con.set_cookie(response, session)
        return response

    @app.post("/setup")
    async def setup(request: Request) -> Response:  # noqa: PLR0911 - one early return per refusal
        session, form = con.session(request), await read_form(request)
        if not csrf_ok(session, form):
            return refused(request, session)
        key = f"client:{client(request)}"
        if not con.technicians.empty():
            return RedirectResponse("/login", status_code=303)
        if con.throttle.retry_after(key) > 0:
            return con.page(request, "setup.html", session, 429, error="Too many wrong codes; wait and retry.")
        password = form.get("password", "")
        if password != form.get("confirm", ""):
            return con.page(request, "setup.html", session, 400, error="The two passwords differ.")
        try:
            from appliance.console.credentials import check_name, check_password

            check_name(form.get("name", "")), check_password(password)
        except UsageError as exc:
            return con.page(request, "setup.html", session, 400, error=exc.problem)
        if not con.setup.redeem(form.get("code", "")):
            con.throttle.failed(key)
            return con.page(request, "setup.html", session, 401, error="Wrong or used setup code.")
        con.technicians.set(form["name"], password)
        con.events.emit("console.technician_set", technician=form["name"], how="one-time setup code")
        return RedirectResponse("/login", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session, form = con.session(request), await read_form(request)
        if not csrf_ok(session, form):
            return refused(request, session)
        con.sessions.drop(session.id if session else None)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(metrics.render(con.config, con.settings.remote), media_type=metrics.CONTENT_TYPE)


def register_pages(app: FastAPI, con: Console, csrf_ok: CsrfCheck, refused: Refuse) -> None:
    from appliance.console.pages import register

    register(app, con, csrf_ok, refused)


def read_safely(fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return fn(), None
    except (ApplianceError, StorageError) as exc:
        return None, f"{type(exc).__name__}: {getattr(exc, 'problem', exc)}"


__all__ = ["BUNDLE_RE", "Console", "ConsoleSettings", "create_app", "read_form", "read_safely", "readmodel"]
