"""``GET /v1/health`` and ``GET /v1/health/live``: the probes of load balancers and
orchestrators.

``/v1/health`` is readiness: 200 when Postgres answers a ``SELECT 1``, 503 otherwise (take
this process out of rotation). ``/v1/health/live`` is liveness: 200 whenever the process's
event loop answers, whatever the database does, because restarting every API process during
a database outage fixes nothing (deploy/README.md, *Probes*). Neither needs a key nor is
rate-limited (the guard in `webhooks.api._app` lets them through, as it does the OpenAPI
document): a probe has no key, and a probe counted against a limit would fail when the
customers are busiest. They say nothing else: no version, no hosts, no counts.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from webhooks.api._errors import server_error
from webhooks.api._handling import state_of
from webhooks.api._routes import error_doc, reject_unknown_parameters
from webhooks.database import sql

log = logging.getLogger("webhooks.api")

HEALTH_PATH = "/v1/health"
LIVE_PATH = "/v1/health/live"
PING = "SELECT 1"

router = APIRouter(prefix="/v1", dependencies=[Depends(reject_unknown_parameters)])


class Health(BaseModel):
    """The process can serve requests: its database answers."""

    model_config = {"json_schema_extra": {"examples": [{"status": "ok"}]}}
    status: Literal["ok"]


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_doc("An unknown query parameter.", "invalid_request", "unknown parameter 'x'", "x"),
    503: error_doc(
        "The database does not answer: take this process out of rotation for now.",
        "server",
        "the service is unavailable for a moment; retry with exponential backoff",
    ),
}


@router.get(
    "/health",
    response_model=Health,
    summary="Readiness",
    responses=RESPONSES,
    tags=["health"],
    # Documented as needing no key (the document's default is the bearer key).
    openapi_extra={"security": []},
)
async def health(request: Request) -> JSONResponse:
    """Liveness and readiness: 200 ``{"status": "ok"}`` when the database answers, 503 in the
    error shape otherwise. Needs no key and is not rate-limited."""
    state = state_of(request)

    def ping() -> None:
        with state.engine.connect() as conn:
            conn.execute(sql(PING, state.settings.db_schema))

    try:
        await run_in_threadpool(ping)
    except SQLAlchemyError as exc:
        log.warning("api.health.unavailable", extra={"reason": type(exc).__name__})
        return server_error(503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/health/live",
    response_model=Health,
    responses={400: RESPONSES[400]},
    tags=["health"],
    summary="Liveness",
    openapi_extra={"security": []},
)
async def liveness() -> JSONResponse:
    """Liveness: 200 ``{"status": "ok"}`` whenever this process answers; it asks nothing of
    the database (use `/v1/health` for readiness). Needs no key and is not rate-limited."""
    return JSONResponse({"status": "ok"})
