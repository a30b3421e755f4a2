"""The least an HTTP route served by uvicorn can cost: one "hello" route, raw ASGI, no
framework. `bench.api_bench` serves it beside `webhooks api` as the limit of the API's rate.

Run as ``python -m uvicorn bench.hello_app:app --no-access-log``.
"""

from __future__ import annotations

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
