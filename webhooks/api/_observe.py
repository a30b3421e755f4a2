"""What the API process tells its operators about each request: Prometheus metrics and one
log line.

- ``webhooks_api_requests_total{route, method, status}``: answers given.
- ``webhooks_api_request_duration_seconds{route}``: histogram of the time to answer (for a
  stream, to its first byte: a stream's life is not a request's latency).

``route`` is the path template (``/v1/events/{event_id}``), never the path itself, so series
stay bounded whatever the ids asked for; a path no route serves is ``unmatched``. They are in
the process's default registry, served on ``/metrics`` of `WEBHOOKS_METRICS_PORT` by `serve`
(`webhooks.metrics.serve`, as workers and dispatchers do); a Cloud API that mounts the app
exports them with its own.

The log line is ``api.request`` with ``route``, ``method``, ``status``, ``duration_ms`` and
``key_id`` (the key's id, ``key_…``, or none before a key was admitted): never the key, never
the ``Authorization`` header, never the query string (a cursor or a filter is the caller's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from re import Pattern

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram
from starlette.routing import compile_path

log = logging.getLogger("webhooks.api.requests")

REQUESTS = Counter(
    "webhooks_api_requests", "Answers of the HTTP API.", ["route", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "webhooks_api_request_duration_seconds",
    "Time the HTTP API took to answer (to the first byte of a stream).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UNMATCHED = "unmatched"


def route_templates(app: FastAPI) -> list[tuple[Pattern[str], str]]:
    """The path templates of the app's documented routes (its OpenAPI document's paths), each
    with the pattern of the paths it serves; templates without a parameter first, so that
    ``/v1/webhook_attempts/stream`` is not taken for an attempt's id."""
    paths = sorted(app.openapi().get("paths", {}), key=lambda template: template.count("{"))
    return [(compile_path(template)[0], template) for template in paths]


def route_of(templates: Sequence[tuple[Pattern[str], str]], request: Request) -> str:
    """The path template of the route that serves ``request`` (also when the guard answered
    before routing), or ``unmatched``."""
    routed = request.scope.get("route")
    if routed is not None and hasattr(routed, "path"):
        return str(routed.path)
    # Not routed: the path as the app sees it (without the prefix it may be mounted under).
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    for pattern, template in templates:
        if pattern.match(path):
            return template
    return UNMATCHED


def install(app: FastAPI) -> None:
    """Count, time and log every request ``app`` answers (the outermost middleware: it sees
    the guard's refusals too)."""

    templates: list[tuple[Pattern[str], str]] = []

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not templates:  # once, when every route is in place
            templates.extend(route_templates(app))
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            # Answered by the server's last-resort handler, outside this middleware: a 500.
            _record(templates, request, 500, time.perf_counter() - started)
            raise
        _record(templates, request, response.status_code, time.perf_counter() - started)
        return response


def _record(
    templates: Sequence[tuple[Pattern[str], str]], request: Request, status: int, seconds: float
) -> None:
    route = route_of(templates, request)
    REQUESTS.labels(route, request.method, str(status)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)
    identity = getattr(request.state, "identity", None)
    log.info(
        "api.request",
        extra={
            "route": route,
            "method": request.method,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "key_id": identity.key_id if identity is not None else None,
        },
    )
