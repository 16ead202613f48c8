"""The model service's HTTP interface (FastAPI): health, readiness, inference, canary, admission.

Owns: routes, request/response shapes and the mapping of runtime refusals to status codes.
Does not own behaviour (``runtime``) or the server process (``server``).

    GET  /health       200 always while the process lives: phase, handoff, restore stats
    GET  /ready        200 only while serving (restore verified and admitted), else 503
    POST /v1/infer     {"inputs": [[...]]} -> {"outputs": [[...]], "slot", "generation"}
    POST /v1/canary    same as infer, also answered in phase "restored" (boot's health gate)
    POST /v1/admit     {"boot_id"}: boot admits traffic after the canary passed
    POST /v1/adapt     {"inputs", "targets"}: one online adaptation step
    POST /v1/export    capture the state into the outbox; returns file and pause
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from appliance.errors import ApplianceError
from appliance.service.runtime import NotAvailableError, ServiceRuntime


class Batch(BaseModel):
    inputs: list[Any]  # nested lists of numbers of any rank the model takes (an image batch is 4-D)


class Adaptation(BaseModel):
    inputs: list[list[float]]
    targets: list[list[float]]


class Admission(BaseModel):
    boot_id: str


def create_app(runtime: ServiceRuntime) -> FastAPI:
    app = FastAPI(title="appliance model service", docs_url=None, redoc_url=None)

    @app.exception_handler(NotAvailableError)
    async def not_available(_: Request, exc: NotAvailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "phase": runtime.phase.value}, status_code=exc.status)

    @app.exception_handler(ApplianceError)
    async def appliance_error(_: Request, exc: ApplianceError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=400)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return runtime.health()

    @app.get("/ready")
    def ready() -> JSONResponse:
        body = runtime.health()
        return JSONResponse(body, status_code=200 if body["phase"] == "serving" else 503)

    @app.post("/v1/infer")
    def infer(batch: Batch) -> dict[str, Any]:
        return _answer(runtime, runtime.infer, batch)

    @app.post("/v1/canary")
    def canary(batch: Batch) -> dict[str, Any]:
        return _answer(runtime, runtime.canary, batch)

    @app.post("/v1/admit")
    def admit(body: Admission) -> dict[str, Any]:
        runtime.admit(body.boot_id)
        return runtime.health()

    @app.post("/v1/adapt")
    def adapt(body: Adaptation) -> dict[str, Any]:
        result: dict[str, Any] = _shape_errors(lambda: runtime.adapt(body.inputs, body.targets))
        return result

    @app.post("/v1/export")
    def export() -> dict[str, Any]:
        return runtime.export()

    return app


def _answer(runtime: ServiceRuntime, run: Callable[[list[Any]], list[Any]], batch: Batch) -> dict[str, Any]:
    outputs = _shape_errors(lambda: run(batch.inputs))
    opened = runtime.restored.opened if runtime.restored else None
    return {
        "outputs": outputs,
        "slot": opened.slot if opened else None,
        "generation": opened.generation if opened else None,
    }


def _shape_errors(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (RuntimeError, ValueError, TypeError) as exc:  # wrong input shape or dtype for this model
        raise HTTPException(status_code=422, detail=f"the model cannot take this input: {exc}") from exc
