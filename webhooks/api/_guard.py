"""The guard in front of every route: who is asking (`_auth.admit`), how often
(`_auth.count_request`), and the headers every answer carries.

Plain ASGI rather than ``@app.middleware("http")``: Starlette runs those in a task of their
own with a stream between it and the app, which cost more per request than the page's query.
The key lookup and the rate-limit count share one hop to the thread pool (each hop is a
handoff between threads, paid under load in queueing behind every other request's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhooks import clock
from webhooks.api._auth import Identity, admit, count_request
from webhooks.api._errors import ApiError, server_error
from webhooks.api._handling import ApiState
from webhooks.errors import DatabaseUnavailable

log = logging.getLogger("webhooks.api")

# On every answer: JSON is data, never something to sniff, render or keep in a cache.
ALWAYS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class Guard:
    """Admit and count each request but those ``unguarded`` says need no key, leave its
    `Identity` in ``scope["state"]["identity"]`` (``request.state.identity``), and add
    `ALWAYS` and a live key's rate-limit headers to the answer, whoever gives it."""

    def __init__(self, app: ASGIApp, *, state: ApiState, unguarded: Callable[[str], bool]) -> None:
        self.app = app
        self.state = state
        self.unguarded = unguarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra: dict[str, str] = {}
        if not self.unguarded(scope["path"]):
            try:
                identity, extra = await run_in_threadpool(self._admit, scope)
            except ApiError as exc:
                await _with(exc.response(), ALWAYS)(scope, receive, send)
                return
            except DatabaseUnavailable:
                log.exception("api_database_unavailable")
                await _with(server_error(503), ALWAYS)(scope, receive, send)
                return
            scope.setdefault("state", {})["identity"] = identity
        headers = {**ALWAYS, **extra}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer = MutableHeaders(scope=message)
                for name, value in headers.items():
                    answer[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)

    def _admit(self, scope: Scope) -> tuple[Identity, dict[str, str]]:
        """In the thread pool: the request's identity and its rate-limit headers."""
        state = self.state
        client = scope.get("client")
        identity = admit(
            state.settings,
            state.lookup,
            scheme=scope.get("scheme", "http"),
            peer=client[0] if client else None,
            headers={
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in scope["headers"]
            },
        )
        return identity, count_request(state.engine, state.settings, identity, clock.now())


def _with(response: Response, headers: dict[str, str]) -> Response:
    for name, value in headers.items():
        response.headers[name] = value
    return response
