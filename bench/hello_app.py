"""The least an HTTP route served by uvicorn can cost: one "hello" route, raw ASGI, no
framework. `bench.api_bench` serves it beside `webhooks api` as the limit of the API's rate,
and `framework` beside both: what FastAPI itself costs for a route like the attempt list's.

Run as ``python -m uvicorn bench.hello_app:app --no-access-log`` (or ``:framework``).
"""

from __future__ import annotations

import functools
from typing import Any

BODY = b'{"hello":"world"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with `BODY`."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def _framework() -> Any:
    """FastAPI's own ceiling for a route shaped like the attempt list: the same query
    parameters, validated the same way, and no database, no guard, no JSON of rows. Served as
    ``bench.hello_app:framework``; ``/sync`` is a plain ``def`` (as the API's routes are, so
    run in the thread pool), ``/async`` an ``async def``."""
    from fastapi import FastAPI, Query
    from fastapi.responses import Response

    framework = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    statuses = Query(None, pattern="^(succeeded|failed)$")

    def sync_route(
        limit: int = Query(10, ge=1, le=100),
        cursor: str | None = Query(None, max_length=500),
        created_after: str | None = Query(None, max_length=40),
        created_before: str | None = Query(None, max_length=40),
        event_id: str | None = Query(None, max_length=200),
        delivery_id: str | None = Query(None, max_length=200),
        endpoint_id: str | None = Query(None, max_length=200),
        status: str | None = statuses,
    ) -> Response:
        return Response(BODY, media_type="application/json")

    # The same parameters (FastAPI reads them through functools.wraps), awaited on the loop.
    @functools.wraps(sync_route)
    async def async_route(**params: Any) -> Response:
        return sync_route(**params)

    framework.get("/sync")(sync_route)
    framework.get("/async")(async_route)
    return framework


framework = _framework()
