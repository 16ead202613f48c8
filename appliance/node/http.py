"""A tiny JSON-over-HTTP client for the model service on loopback (stdlib only, torch-free).

Owns: one GET/POST helper returning ``(status, body)``; network failures become
``ServiceError``. Does not own retries or deciding what a status means (callers).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from appliance.errors import ServiceError


def call(url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``url`` (``body`` None) or POST ``body`` as JSON; ``(status, parsed JSON or None)``."""
    if not url.startswith(("http://", "https://")):
        raise ServiceError(f"service URL {url!r} is not http(s)")
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (URL from node.json)
            return response.status, _parse(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _parse(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(f"model service at {url} is unreachable: {exc}") from exc


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
