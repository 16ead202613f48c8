"""The model service's network interface (FastAPI): inference, health, readiness — nothing that changes state.

Owns: the network routes, their request/response shapes, the Host allowlist and the body cap
in front of them, and the mapping of runtime refusals to status codes. Does not own behaviour
(``runtime``), the control channel (``control``: canary, admission, export, adaptation) or the
server process (``server``).

    GET  /health       200 while the process lives: phase, slot, generation, restore stats (no boot id)
    GET  /ready        200 only while serving (restore verified and admitted), else 503
    POST /v1/infer     {"inputs": [[...]]} -> {"outputs": [[...]], "slot", "generation"}
    POST /v1/adapt     only with node.json ``network_adapt``: bearer token, rate-limited (off by default)

No OpenAPI document or docs pages are served. A request whose Host header is not in
``allowed_hosts`` is answered 400 before any route runs (a DNS-rebinding page in an on-device
browser cannot reach the service under its own name).
"""

# No ``from __future__ import annotations``: FastAPI must see the request models built at run time.
import hmac
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from appliance.errors import ApplianceError, ConfigError
from appliance.service.limits import BodyLimit, request_models
from appliance.service.metrics import CountRequests
from appliance.service.runtime import NotAvailableError, ServiceRuntime


def create_app(runtime: ServiceRuntime) -> FastAPI:
    config = runtime.config
    models = request_models(config)
    app = FastAPI(title="appliance model service", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts))
    app.add_middleware(CountRequests, metrics=runtime.metrics)  # outermost: refusals are counted too

    @app.exception_handler(NotAvailableError)
    async def not_available(_: Request, exc: NotAvailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "phase": runtime.phase.value}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming what is wrong, never echoing the input back (it may hold NaN, or be huge)."""
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()[:5]]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ApplianceError)
    async def appliance_error(_: Request, exc: ApplianceError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "problem": exc.problem}, status_code=400)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return runtime.public_health()

    @app.get("/ready")
    def ready() -> JSONResponse:
        body = runtime.public_health()
        return JSONResponse(body, status_code=200 if body["phase"] == "serving" else 503)

    batch_model = models.batch

    @app.post("/v1/infer")
    def infer(batch: batch_model) -> dict[str, Any]:  # type: ignore[valid-type]
        return answer(runtime, runtime.infer, batch.inputs)  # type: ignore[attr-defined]

    if config.network_adapt:
        gate = AdaptGate(Path(config.adapt_token_file), config.adapt_per_minute)
        adaptation_model = models.adaptation

        @app.post("/v1/adapt")
        def adapt(body: adaptation_model, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
            gate.check(request.headers.get("authorization", ""))
            result: dict[str, Any] = shape_errors(lambda: runtime.adapt(body.inputs, body.targets))  # type: ignore[attr-defined]
            return result

    return app


class AdaptGate:
    """Network adaptation's door: a bearer token compared in constant time, then a per-minute budget."""

    def __init__(self, token_file: Path, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read adapt_token_file {token_file}: {exc.strerror or exc}") from exc
        if len(token) < 32:
            raise ConfigError(f"adapt_token_file {token_file} must hold a token of at least 32 characters")
        self.expected = f"Bearer {token}".encode()
        self.per_minute = per_minute
        self.clock = clock
        self.lock = threading.Lock()
        self.window: list[float] = []

    def check(self, authorization: str) -> None:
        if not hmac.compare_digest(authorization.encode("utf-8", "replace"), self.expected):
            raise HTTPException(status_code=401, detail="adaptation needs the bearer token")
        with self.lock:
            now = self.clock()
            self.window = [t for t in self.window if now - t < 60]
            if len(self.window) >= self.per_minute:
                raise HTTPException(status_code=429, detail="adaptation rate limit (adapt_per_minute) reached")
            self.window.append(now)


def answer(runtime: ServiceRuntime, run: Callable[[list[Any]], list[Any]], inputs: Any) -> dict[str, Any]:
    outputs = shape_errors(lambda: run(inputs))
    opened = runtime.restored.opened if runtime.restored else None
    return {
        "outputs": outputs,
        "slot": opened.slot if opened else None,
        "generation": opened.generation if opened else None,
    }


def shape_errors(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (RuntimeError, ValueError, TypeError) as exc:  # wrong input shape or dtype for this model
        raise HTTPException(status_code=422, detail=f"the model cannot take this input: {exc}") from exc
