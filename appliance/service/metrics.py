"""Prometheus metrics of the model service, served on the control channel only (issue 10, design §7.1.1).

Owns: ``ServiceMetrics`` — one ``prometheus_client`` registry per service process with
``appliance_service_requests_total{route,status}`` and ``appliance_service_request_seconds{route}``
(every request of the network listener, counted by an ASGI middleware; unknown paths are
counted as route ``other`` so a scanner cannot grow the label set) and, read at scrape time
from the runtime, ``appliance_service_phase{phase}``, ``appliance_service_generation`` and
``appliance_service_restore_seconds{stage}`` (the verified restore's stage times). Does not own
where it is served: ``GET /v1/metrics`` on ``RUN/control.sock``, role ``metrics`` (root, the
service's own user, ``control_users`` and ``metrics_users``, default ``appliance-console``).

Why not on the network listener: a metrics endpoint tells a remote peer the phase, the
generation, request volumes and timings, and the network listener authenticates nobody; the
decision (design §7.1.1) keeps the network surface to inference, health and readiness. A
Prometheus agent on the node scrapes the socket (``curl --unix-socket RUN/control.sock
http://localhost/v1/metrics``) as a user listed in ``metrics_users``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from appliance.service.runtime import ServiceRuntime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = frozenset({"/health", "/ready", "/v1/infer", "/v1/adapt"})
PHASES = ("loading", "standby", "restored", "serving", "failed")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class _RuntimeCollector(Collector):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        phase = GaugeMetricFamily("appliance_service_phase", "1 for the service's current phase", labels=["phase"])
        for name in sorted({*PHASES, rt.phase.value}):
            phase.add_metric([name], 1.0 if rt.phase.value == name else 0.0)
        yield phase
        opened = rt.restored.opened if rt.restored else None
        gen = GaugeMetricFamily("appliance_service_generation", "generation the service restored (0: none)")
        gen.add_metric([], float(opened.generation if opened else 0))
        yield gen
        stages = GaugeMetricFamily("appliance_service_restore_seconds", "verified restore time per stage",
                                   labels=["stage"])  # fmt: skip
        stats: dict[str, Any] = rt.restored.stats.to_dict() if rt.restored else {}
        for stage, seconds in sorted((stats.get("stage_seconds") or {}).items()):
            stages.add_metric([str(stage)], float(seconds))
        if "seconds" in stats:
            stages.add_metric(["total"], float(stats["seconds"]))
        yield stages


class ServiceMetrics:
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("appliance_service_requests", "requests to the network listener",
                                ["route", "status"], registry=self.registry)  # fmt: skip
        self.seconds = Histogram("appliance_service_request_seconds", "time to answer a network request",
                                 ["route"], registry=self.registry)  # fmt: skip
        self.registry.register(_RuntimeCollector(runtime))

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware counting every HTTP request of the network listener with its final status."""

    def __init__(self, app: App, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(str(scope.get("path", "")), status[0], time.perf_counter() - start)
