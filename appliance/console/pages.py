"""The signed-in pages: Overview, Slots, Events, action confirmation, job progress, diagnostics download.

Owns: the routes behind the login (each redirects to ``/login`` without a session), turning an
action request into its plan (``appliance.format.console``) for the confirmation page, and
starting the confirmed action as a job (``actions.Jobs``). Does not own request checks,
sessions or login (``app``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from appliance.console import readmodel
from appliance.format import console as rules
from appliance.format.commit import SLOT_NAMES

if TYPE_CHECKING:
    from appliance.console.app import Console, CsrfCheck, Refuse


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None and len(value) < 20 else None
    except ValueError:
        return None


def plan_for(  # noqa: PLR0911 - one return per action
    con: Console, action: str, params: dict[str, str]
) -> tuple[rules.ActionPlan, list[str]]:
    """The plan shown on the confirmation page and the ``appliance tech`` arguments that carry it out."""
    if action == "verify":
        return rules.plan_verify(), []
    if action == "scrub":
        s = con.settings.scrub_seconds
        return rules.plan_scrub(s), ["--max-duration", str(s)]
    if action == "restart-service":
        from appliance.cli.node_commands import boot_status

        return rules.plan_restart((boot_status(con.config)["service"] or {}).get("phase")), []
    if action == "diagnostics":
        return rules.plan_diagnostics(), []
    if action == "slot-reset":
        slot = params.get("slot", "")
        if slot not in SLOT_NAMES:
            return rules.ActionPlan(action, "Reset a BAD mark", "", refusal=f"unknown slot {slot[:8]!r}"), []
        from appliance.cli.node_commands import boot_status

        return rules.plan_slot_reset(slot, boot_status(con.config)["slots"][slot]), [slot]
    if action == "rollback":
        generation = _int(params.get("generation"))
        if generation is None or generation < 1:
            return rules.ActionPlan(action, "Roll back", "", refusal="choose a generation on the Slots page"), []
        floor = con.floor()
        if floor is None:
            refusal = "the anti-rollback floor is unreadable; boot rebuilds it first"
            return rules.ActionPlan(action, "Roll back", "", refusal=refusal), []
        from appliance.console.operations import rollback_plan

        return rollback_plan(con.config, generation), [str(generation)]
    if action == "import":
        return plan_import(con, params.get("device", ""), _int(params.get("generation")))
    if action == "diagnostics-usb":
        from appliance.console.usb import list_sticks

        device = params.get("device", "")[:64]
        plan = rules.plan_diagnostics_usb(device, device in {s.device for s in list_sticks()})
        return plan, [device]
    return rules.ActionPlan(action, "Unknown action", "", refusal=f"unknown action {action[:40]!r}"), []


def scan_stick(con: Console, device: str) -> tuple[list[rules.StickCheckpoint], str | None]:
    """The stick's checkpoints (mounted read-only and unmounted again by ``appliance tech usb-scan``)."""
    result = con.jobs.channel.run("usb-scan", [device], "console")
    if not result.ok:
        return [], (result.error or {}).get("problem", "scan failed")
    found = [rules.StickCheckpoint(c["generation"], c["model"], tuple(c["signers"]), c["trusted"], c["problem"],
                                   c["already"]) for c in result.data.get("checkpoints", [])]  # fmt: skip
    return found, None


def plan_import(con: Console, device: str, generation: int | None) -> tuple[rules.ActionPlan, list[str]]:
    from appliance.console.usb import list_sticks

    if generation is None or device not in {s.device for s in list_sticks()}:
        refusal = "choose a checkpoint of a detected stick on the USB page"
        return rules.ActionPlan("import", "Import from USB", "", refusal=refusal), []
    found, problem = scan_stick(con, device)
    if problem is not None:
        return rules.ActionPlan("import", "Import from USB", "", refusal=problem), []
    match = next((c for c in found if c.generation == generation), None)
    return rules.plan_import(device, match, generation), [device, str(generation), "--progress-json"]


def register(app: FastAPI, con: Console, csrf_ok: CsrfCheck, refused: Refuse) -> None:
    from appliance.console.app import BUNDLE_RE, read_form, read_safely

    def signed_in(request: Request) -> Any:
        s = con.session(request)
        return s if s is not None and s.technician else None

    def to_login() -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request) -> Response:
        if not (s := signed_in(request)):
            return to_login()
        data, problem = read_safely(lambda: readmodel.overview(con.config))
        return con.page(request, "overview.html", s, data=data, problem=problem, nav="overview")

    @app.get("/slots", response_class=HTMLResponse)
    async def slots(request: Request) -> Response:
        if not (s := signed_in(request)):
            return to_login()
        data, problem = read_safely(lambda: readmodel.slots(con.config))
        return con.page(request, "slots.html", s, data=data, problem=problem, nav="slots", floor=con.floor())

    @app.get("/events", response_class=HTMLResponse)
    async def events(request: Request, component: str = "", severity: str = "") -> Response:
        if not (s := signed_in(request)):
            return to_login()
        data = readmodel.events(con.config, component[:32], severity[:16])
        return con.page(request, "events.html", s, data=data, nav="events")

    @app.get("/actions", response_class=HTMLResponse)
    async def actions(request: Request) -> Response:
        if not (s := signed_in(request)):
            return to_login()
        return con.page(request, "actions.html", s, nav="actions", busy=con.jobs.busy())

    @app.get("/actions/{action}", response_class=HTMLResponse)
    async def confirm(request: Request, action: str) -> Response:
        if not (s := signed_in(request)):
            return to_login()
        plan, _ = await run_in_threadpool(plan_for, con, action, dict(request.query_params))
        return con.page(request, "confirm.html", s, plan=plan, nav="actions", busy=con.jobs.busy())

    @app.post("/actions/{action}")
    async def run(request: Request, action: str) -> Response:
        s, form = signed_in(request), await read_form(request)
        if not s:
            return to_login()
        if not csrf_ok(s, form):
            return refused(request, s)
        plan, args = await run_in_threadpool(plan_for, con, action, form)
        if not plan.allowed:
            return con.page(request, "confirm.html", s, 409, plan=plan, nav="actions", busy=None)
        if con.jobs.busy() is not None:
            return con.page(request, "confirm.html", s, 409, plan=plan, nav="actions", busy=con.jobs.busy())
        if action == "diagnostics":
            out = _bundle_dir(con) / f"diagnostics-{_token()}.tar.gz"
            args = ["--out", str(out)]
        job = con.jobs.start(action, args, s.technician, dict(plan.params))
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    _register_usb(app, con, signed_in, to_login)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job(request: Request, job_id: str) -> Response:
        if not (s := signed_in(request)):
            return to_login()
        found = con.jobs.get(job_id[:32])
        if found is None:
            return con.page(request, "error.html", s, 404, title="No such job", problem="This job is not known.")
        view = found.to_dict(time.monotonic())
        bundle = Path(str((view["data"] or {}).get("file", ""))).name
        bundle = bundle if BUNDLE_RE.match(bundle) else ""
        return con.page(request, "job.html", s, job=view, nav="actions", bundle=bundle)

    @app.get("/download/{name}")
    async def download(request: Request, name: str) -> Response:
        if not signed_in(request):
            return to_login()
        path = _bundle_dir(con) / name
        if not BUNDLE_RE.match(name) or not path.is_file():
            return Response("no such bundle", status_code=404)
        return FileResponse(path, media_type="application/gzip", filename=name)


def _register_usb(app: FastAPI, con: Console, signed_in: Any, to_login: Callable[[], Response]) -> None:
    @app.get("/usb", response_class=HTMLResponse)
    async def usb_page(request: Request) -> Response:
        if not (s := signed_in(request)):
            return to_login()
        from appliance.console.usb import list_sticks

        try:
            sticks, problem = await run_in_threadpool(list_sticks), None
        except (ImportError, OSError) as exc:
            sticks, problem = [], f"udev is not available: {exc}"
        return con.page(request, "usb.html", s, nav="usb", sticks=sticks, problem=problem)

    @app.get("/usb/scan", response_class=HTMLResponse)
    async def usb_scan(request: Request, device: str = "") -> Response:
        if not (s := signed_in(request)):
            return to_login()
        from appliance.console.usb import list_sticks

        if device not in {x.device for x in await run_in_threadpool(list_sticks)}:
            return con.page(request, "error.html", s, 404, title="No such stick", problem="That stick is gone.")
        found, problem = await run_in_threadpool(scan_stick, con, device)
        return con.page(request, "usb_scan.html", s, nav="usb", device=device, found=found, problem=problem)


def _bundle_dir(con: Console) -> Path:
    d = con.settings.state_dir / "diagnostics"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _token() -> str:
    import secrets

    return secrets.token_hex(8)
