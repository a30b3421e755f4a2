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
from collections.abc import Sequence
from re import Pattern

from fastapi import FastAPI
from prometheus_client import Counter, Histogram
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def route_of(templates: Sequence[tuple[Pattern[str], str]], scope: Scope) -> str:
    """The path template of the route that serves the request of ``scope`` (also when the
    guard answered before routing), or ``unmatched``."""
    routed = scope.get("route")
    if routed is not None and hasattr(routed, "path"):
        return str(routed.path)
    # Not routed: the path as the app sees it (without the prefix it may be mounted under).
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    for pattern, template in templates:
        if pattern.match(path):
            return template
    return UNMATCHED


class Observer:
    """Count, time and log every request the app answers: the outermost middleware, so it
    sees the guard's refusals too.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette runs those in a task of
    their own with a stream between it and the app, which cost more per request than the
    page's query; this one only watches the answer's first message go by.
    """

    def __init__(self, app: ASGIApp, *, documented: FastAPI) -> None:
        self.app = app
        self.documented = documented
        self.templates: list[tuple[Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.templates is None:  # once, when every route is in place
            self.templates = route_templates(self.documented)
        templates = self.templates
        started = time.perf_counter()
        answered = False

        async def observed(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                _record(templates, scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception:
            if not answered:
                # Answered by the server's last-resort handler, outside this middleware: a 500.
                _record(templates, scope, 500, time.perf_counter() - started)
            raise


def _record(
    templates: Sequence[tuple[Pattern[str], str]], scope: Scope, status: int, seconds: float
) -> None:
    route = route_of(templates, scope)
    method = scope["method"]
    REQUESTS.labels(route, method, str(status)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)
    identity = scope.get("state", {}).get("identity")
    log.info(
        "api.request",
        extra={
            "route": route,
            "method": method,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "key_id": identity.key_id if identity is not None else None,
        },
    )
