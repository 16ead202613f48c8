"""Bounded input for both listeners: request shapes with caps, body size, connections, slow clients, log floods.

Owns: ``RequestModels`` (pydantic models whose batch, row and number checks come from node.json:
at most ``max_batch`` rows of at most ``max_row`` finite numbers — NaN and ±Infinity are
refused), ``BodyLimit`` (an ASGI middleware answering 413 before reading a body over
``max_body_bytes``, whether announced by Content-Length or streamed), ``bounded_protocol``
(uvicorn's h11 protocol with a header-read deadline and a connection cap), and
``RateLimitFilter`` (at most N log records per logger per minute, then one summary line).
Does not own routes (``app``, ``control``) or what the model does with the numbers.

Sources of the numbers: a 50 MB JSON body drove the unbounded service to 7.4 GB RSS; 500
slowloris connections were held open forever; every failed ``accept()`` at the fd limit
logged a traceback (10.7 MB of log). Each cap here closes one of those (tests/integration/
test_trust_network.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from appliance.node.config import NodeConfig

_503 = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class RequestModels:
    batch: type[BaseModel]  # {"inputs": nested lists (rank <= 8) of finite numbers}
    adaptation: type[BaseModel]  # {"inputs": ..., "targets": ...}
    admission: type[BaseModel]  # {"boot_id": "..."}


MAX_INPUT_RANK = 8  # an image batch is 4-D, video 5-D: inference and canary inputs of any such rank


def request_models(config: NodeConfig) -> RequestModels:
    number = Annotated[float, Field(allow_inf_nan=False)]
    row = Annotated[list[number], Field(min_length=1, max_length=config.max_row)]
    rows = Annotated[list[row], Field(min_length=1, max_length=config.max_batch)]
    tensor = Annotated[list[Any], AfterValidator(_nested_input(config.max_batch, config.max_row))]
    batch = create_model("Batch", inputs=(tensor, ...))
    adaptation = create_model("Adaptation", inputs=(rows, ...), targets=(rows, ...))
    admission = create_model("Admission", boot_id=(Annotated[str, Field(min_length=1, max_length=64)], ...))
    return RequestModels(batch, adaptation, admission)


def _nested_input(max_batch: int, max_row: int) -> Callable[[list[Any]], list[Any]]:
    """Inference/canary input of any rank up to ``MAX_INPUT_RANK`` (issue 12: a (2,3,8,8) canary is 4-D).

    The caps of the 2-D form still hold: at most ``max_batch`` items in the first dimension, at
    most ``max_row`` numbers in an innermost list, ``max_batch * max_row`` numbers in all, every
    number finite. Walked with an explicit stack (no recursion on untrusted nesting).
    """

    def check(value: list[Any]) -> list[Any]:
        if not 1 <= len(value) <= max_batch:
            raise ValueError(f"inputs must hold 1..{max_batch} items")
        budget = max_batch * max_row
        stack: list[tuple[Any, int]] = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, list):
                if depth > MAX_INPUT_RANK or not item:
                    raise ValueError(f"inputs must be non-empty nested lists of at most {MAX_INPUT_RANK} dimensions")
                if not isinstance(item[0], list) and len(item) > max_row:
                    raise ValueError(f"an innermost list holds more than {max_row} numbers")
                stack.extend((child, depth + 1) for child in item)
                continue
            if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
                raise ValueError("inputs must be finite numbers")
            budget -= 1
            if budget < 0:
                raise ValueError(f"inputs hold more than {max_batch * max_row} numbers")
        return value

    return check


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (checked before the app reads it)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        seen, refused = 0, False

        async def bounded() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not started:
                refused = True
                await _too_large(send, self.max_bytes)  # answered now; the app sees a disconnect
                return {"type": "http.disconnect"}
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, guarded_send)
        except Exception:
            if not refused:
                raise


async def _too_large(send: Send, limit: int) -> None:
    body = b'{"detail":"request body larger than max_body_bytes (%d)"}' % limit
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bounded_protocol(max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap and a deadline for each request's headers.

    A connection over the cap is answered 503 and closed at once. Every connection must deliver a
    request's headers within ``header_timeout`` seconds of opening (or of its previous response
    completing); a client trickling header bytes (slowloris) is closed when the deadline passes.
    """

    class BoundedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_since: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                _rate_limited_warning("connection refused: %d connections open (max_connections)", max_connections)
                transport.write(_503)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._waiting_since = self.cycle  # the request in flight when the wait began (None: none yet)
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.cycle is self._waiting_since and not self.transport.is_closing():
                self.transport.close()  # no new request's headers arrived in time

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedH11Protocol


class RateLimitFilter(logging.Filter):
    """Pass at most ``per_minute`` records per logger per minute; then one line saying how many were dropped."""

    def __init__(self, per_minute: int = 10, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.clock = clock
        self._window: dict[str, tuple[float, int, int]] = {}  # logger -> (window start, passed, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        start, passed, dropped = self._window.get(record.name, (now, 0, 0))
        if now - start >= 60:
            if dropped:
                record.msg = f"[{dropped} similar log records dropped in the last minute] {record.msg}"
            start, passed, dropped = now, 0, 0
        if passed >= self.per_minute:
            self._window[record.name] = (start, passed, dropped + 1)
            return False
        self._window[record.name] = (start, passed + 1, dropped)
        if record.exc_info and passed >= 1:  # one traceback per window is enough
            record.exc_info, record.exc_text = None, None
        return True


_LIMITED = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "appliance.service")


def limit_logging(per_minute: int = 10) -> RateLimitFilter:
    """Attach one rate limit to the loggers a flood of bad clients or fd exhaustion would fill."""
    limiter = RateLimitFilter(per_minute)
    for name in _LIMITED:
        logging.getLogger(name).addFilter(limiter)
    return limiter


def _rate_limited_warning(message: str, *args: Any) -> None:
    logging.getLogger("appliance.service").warning(message, *args)
