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

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match

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


def flat_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The routes with a path, those of included routers too (FastAPI keeps an included
    router's routes, prefix and all, behind one entry of the app's list)."""
    flat: list[BaseRoute] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            flat.extend(flat_routes(included.routes))
        elif hasattr(route, "path"):
            flat.append(route)
    return flat


def route_of(routes: Sequence[BaseRoute], request: Request) -> str:
    """The path template of the route that serves ``request`` (also when the guard answered
    before routing, or the method is not allowed), or ``unmatched``."""
    routed = request.scope.get("route")
    if routed is not None and hasattr(routed, "path"):
        return str(routed.path)
    partial = UNMATCHED
    for route in routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
        if match == Match.PARTIAL and partial == UNMATCHED:
            partial = str(getattr(route, "path", UNMATCHED))
    return partial


def install(app: FastAPI) -> None:
    """Count, time and log every request ``app`` answers (the outermost middleware: it sees
    the guard's refusals too)."""

    routes: list[BaseRoute] = []

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not routes:  # once, when every route is in place
            routes.extend(flat_routes(app.router.routes))
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            # Answered by the server's last-resort handler, outside this middleware: a 500.
            _record(routes, request, 500, time.perf_counter() - started)
            raise
        _record(routes, request, response.status_code, time.perf_counter() - started)
        return response


def _record(routes: Sequence[BaseRoute], request: Request, status: int, seconds: float) -> None:
    route = route_of(routes, request)
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
