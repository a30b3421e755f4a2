"""The ASGI application: FastAPI, the routes, the guard in front of them, errors as JSON.

`create_app` builds it, with the portal's pages (`webhooks.portal`); `serve` (`webhooks api`)
serves it with uvicorn, and the Cloud API may mount it in its own application with its own key
lookup.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from webhooks import __version__, metrics
from webhooks.api._auth import KeyLookup, key_table_lookup
from webhooks.api._errors import ApiError, invalid, server_error
from webhooks.api._guard import Guard
from webhooks.api._handling import ApiState
from webhooks.api._health import HEALTH_PATH, LIVE_PATH
from webhooks.api._health import router as health_router
from webhooks.api._observe import Observer
from webhooks.api._portal_sessions import router as portal_sessions_router
from webhooks.api._routes import router
from webhooks.api._stream import attempt_frame
from webhooks.api._stream import router as stream_router
from webhooks.api._tail import AttemptTail
from webhooks.database import create_engine
from webhooks.errors import DatabaseUnavailable
from webhooks.settings import Settings

log = logging.getLogger("webhooks.api")

OPENAPI_URL = "/v1/openapi.json"
# Served without a key and not rate-limited: the document that says how to call the rest, and
# the probes of load balancers and orchestrators.
PUBLIC_PATHS = frozenset({OPENAPI_URL, HEALTH_PATH, LIVE_PATH})

DESCRIPTION = """Webhook endpoints, events, deliveries, attempts, replays and recoveries of one
project in one mode, in the Cloud API's conventions: `Authorization: Bearer sk_live_…` (or
`sk_test_…`: a key sees only its project and mode), JSON in and out, cursor pagination
(`limit` 1 to 100, `cursor`; answers `{"data", "next_cursor", "has_more"}`, newest first),
filters as query parameters, `Idempotency-Key` on POSTs, and errors as
`{"error": {"type", "message", "param"}}`. Live keys get `X-RateLimit-Limit`,
`X-RateLimit-Remaining` and `X-RateLimit-Reset` on every answer, and 429 with `Retry-After`
past the limit. `GET /v1/health` and `GET /v1/health/live` (readiness and liveness
probes) need no key and are not limited."""


def _validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ())]
    where = location[0] if location else ""
    param = ".".join(location[1:]) or None
    if where == "body" and not param:
        param = "body"
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "extra_forbidden":
        message = "unknown field; see the OpenAPI document (/v1/openapi.json) for the fields"
    elif first.get("type") == "json_invalid":
        message, param = "the body is not valid JSON", "body"
    return invalid(f"{param or where}: {message}", param=param)


def create_app(settings: Settings | None = None, *, key_lookup: KeyLookup | None = None) -> FastAPI:
    """The HTTP API as an ASGI application.

    Args:
        settings: defaults to `Settings.from_env()`.
        key_lookup: from a bearer token to its `Identity` (key id, project, mode, scope and
            allowed networks), or None when the token is no usable key. The Cloud API passes
            its own to use its keys; by default, ours (`webhooks key create`).
    """
    # Here, not at the top: the portal is built on this package's modules.
    from webhooks.portal import install as install_portal
    from webhooks.portal import is_portal_path

    settings = settings or Settings.from_env()
    engine = create_engine(settings, pool_size=10, plan_each_query=True)
    state = ApiState(
        settings=settings,
        engine=engine,
        lookup=key_lookup or key_table_lookup(engine, settings),
        tail=AttemptTail(settings, engine, render=attempt_frame),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.tail.close()
        engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="Cloud API webhooks",
        version=__version__,
        description=DESCRIPTION,
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
    )
    app.state.webhooks = state
    # Before the routes: /v1/webhook_attempts/stream is not an attempt's id.
    app.include_router(stream_router)
    app.include_router(router)
    app.include_router(portal_sessions_router)
    app.include_router(health_router)
    # The portal's pages: a session cookie admits their visitors, not an API key.
    install_portal(app)
    _add_security_scheme(app)

    # Added last, so outermost: the observer counts and logs the guard's refusals too.
    app.add_middleware(
        Guard,
        state=state,
        unguarded=lambda path: path in PUBLIC_PATHS or is_portal_path(path),
    )
    app.add_middleware(Observer, documented=app)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return ApiError(404, "not_found", f"no route {request.url.path}").response()
        if exc.status_code == 405:
            return ApiError(
                405, "invalid_request", f"{request.method} is not allowed on {request.url.path}"
            ).response()
        return ApiError(exc.status_code, "invalid_request", str(exc.detail)).response()

    @app.exception_handler(DatabaseUnavailable)
    async def database_error(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        log.error("api_database_unavailable: %s", exc)
        return server_error(503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api_unexpected_error path=%s", request.url.path)
        return server_error(500)

    return app


def _add_security_scheme(app: FastAPI) -> None:
    """Document the bearer key on every route but the document itself."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key, sk_live_… or sk_test_… (`webhooks key create`).",
            }
        }
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class _Server(uvicorn.Server):
    """uvicorn, ending the attempt streams as soon as it is told to stop: a graceful shutdown
    waits for open responses to finish, and a stream never finishes on its own."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Serve ``app`` (from `create_app`) with uvicorn until SIGINT or SIGTERM, and the
    process's ``/metrics`` on `WEBHOOKS_METRICS_PORT` when that is set.

    A Cloud API that mounts the app in its own server ends the streams at its shutdown with
    ``app.state.webhooks.tail.close()`` (the app's lifespan does it, if the server runs it).
    """
    state: ApiState = app.state.webhooks
    metrics.serve(state.settings)
    # uvicorn's access log is off: its request line carries the query string (the caller's
    # cursors and filters). Our own line per request (`api.request`, `webhooks.api._observe`)
    # names the route template, status, duration and key id instead.
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, proxy_headers=False, log_level="info"
    )
    _Server(config, on_exit=state.tail.end_all).run()
