"""The routes of SPEC's *HTTP API*: thin calls to the domain, scoped to the key's world.

Every object is looked up within the key's project and mode first (not there: 404, whatever
the method), then a write checks the key's scope (a read key: 403), then the domain does the
work. Answers are rendered by `_render`; errors are `ApiError`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Connection

from webhooks import clock
from webhooks.api import _actions
from webhooks.api import _schemas as s
from webhooks.api._errors import ApiError, forbidden, invalid, not_found
from webhooks.api._handling import (
    identity_of,
    next_cursor,
    parse_time,
    position,
    reading,
    require_write,
    respond,
    state_of,
    window,
    write,
)
from webhooks.api._render import (
    attempt_object,
    delivery_object,
    endpoint_object,
    event_object,
    page_body,
    recovery_object,
)
from webhooks.catalogue import example_data
from webhooks.endpoints import delete_endpoint, rotate_secret, update_endpoint
from webhooks.history import get_deliveries
from webhooks.models import DELIVERY_STATES, Endpoint
from webhooks.outbox import publish_event
from webhooks.pages import (
    ATTEMPT_STATUSES,
    MAX_PAGE,
    find_attempt,
    find_delivery,
    find_endpoint,
    find_event,
    find_recovery,
    list_attempts_page,
    list_deliveries_page,
    list_endpoints_page,
    list_events_page,
    list_recoveries_page,
)
from webhooks.recovery import RecoverySelection, cancel_recovery, create_recovery
from webhooks.replay import replay_event
from webhooks.sandbox import trigger_event


def reject_unknown_parameters(request: Request) -> None:
    """400 naming a query parameter the route does not take (a typo is not ignored)."""
    route = request.scope.get("route")
    if route is None:
        return
    known = _query_names(route.dependant)
    for name in request.query_params:
        if name not in known:
            raise invalid(
                f"unknown parameter {name!r}; this route takes "
                + (", ".join(sorted(known)) or "no query parameters"),
                param=name,
            )


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def raw_body(request: Request) -> bytes:
    """The request's bytes, for the idempotency check."""
    return await request.body()


def error_doc(
    description: str, type_: str, message: str, param: str | None = None
) -> dict[str, Any]:
    """An error answer as OpenAPI documents it: the shape and one example."""
    return {
        "model": s.ErrorBody,
        "description": description,
        "content": {
            "application/json": {
                "example": {"error": {"type": type_, "message": message, "param": param}}
            }
        },
    }


ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_doc(
        "A malformed or unknown parameter.", "invalid_request", "limit must be 1 to 100", "limit"
    ),
    401: error_doc("No usable key.", "authentication", "the API key is not valid"),
    403: error_doc("The key may not do this.", "permission", "this request needs a write key"),
    404: error_doc(
        "Not in the key's project and mode.", "not_found", "no webhook_endpoint ep_…", "id"
    ),
    429: error_doc("Over the live key's rate limit.", "rate_limited", "retry after 12 s"),
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: error_doc(
        "Idempotency-Key reused.",
        "conflict",
        "this Idempotency-Key was already used",
        "Idempotency-Key",
    ),
    422: error_doc("Refused by the domain.", "invalid_request", "endpoint URL must use https"),
}

router = APIRouter(prefix="/v1", dependencies=[Depends(reject_unknown_parameters)])

Limit = Query(20, ge=1, le=MAX_PAGE, description="Page size, 1 to 100.", examples=[20])
Cursor = Query(None, max_length=2000, description="next_cursor of the previous page.")
After = Query(None, description="Created at or after: RFC 3339 or a date.", examples=["2026-04-01"])
Before = Query(None, description="Created before: RFC 3339 or a date.", examples=["2026-05-01"])
EndpointId = Path(max_length=200, examples=[s.EP])
EventId = Path(max_length=200, examples=[s.EVT])
IdempotencyKeyDoc = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 255},
            "description": "The same key and request within 24 h get the first answer.",
            "example": "9b0e7f52-4b0c-4a77-9f0e-0c3f5e6a1d2b",
        }
    ]
}


def _endpoint_in_world(conn: Connection, request: Request, endpoint_id: str) -> Endpoint:
    endpoint = find_endpoint(
        conn, state_of(request).settings, identity_of(request).world, endpoint_id
    )
    if endpoint is None or endpoint.is_deleted:
        raise not_found("webhook_endpoint", endpoint_id)
    return endpoint


# -- endpoints ---------------------------------------------------------------------------------


@router.get(
    "/webhook_endpoints", response_model=s.EndpointList, responses=ERRORS, tags=["endpoints"]
)
def list_endpoints(
    request: Request,
    limit: int = Limit,
    cursor: str | None = Cursor,
    created_after: str | None = After,
    created_before: str | None = Before,
) -> JSONResponse:
    """List the endpoints of the key's project and mode, newest first."""
    state = state_of(request)
    with reading(request) as conn:
        page = list_endpoints_page(
            conn,
            state.settings,
            identity_of(request).world,
            limit=limit,
            after=position(request, "endpoints", cursor),
            window=window(created_after, created_before),
        )
    items = [endpoint_object(e) for e in page.items]
    return respond(page_body(items, next_cursor(request, "endpoints", page)))


@router.post(
    "/webhook_endpoints",
    status_code=201,
    response_model=s.WebhookEndpointWithSecret,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["endpoints"],
)
def create_endpoint(
    request: Request, body: s.EndpointCreate, raw: bytes = Depends(raw_body)
) -> JSONResponse:
    """Create an endpoint in the key's project and mode; its secret is in this answer only."""
    identity = identity_of(request)
    require_write(identity)
    settings = state_of(request).settings

    def work(conn: Connection) -> tuple[int, Any]:
        endpoint, secret = _actions.create_endpoint(
            conn,
            settings,
            identity.world,
            url=body.url,
            event_types=body.event_types,
            description=body.description,
        )
        return 201, endpoint_object(endpoint, secret=secret)

    return write(request, raw, work)


@router.get(
    "/webhook_endpoints/{endpoint_id}",
    response_model=s.WebhookEndpoint,
    responses=ERRORS,
    tags=["endpoints"],
)
def get_endpoint(request: Request, endpoint_id: str = EndpointId) -> JSONResponse:
    """One endpoint (a deleted one too, with its deleted_at)."""
    with reading(request) as conn:
        endpoint = find_endpoint(
            conn, state_of(request).settings, identity_of(request).world, endpoint_id
        )
    if endpoint is None:
        raise not_found("webhook_endpoint", endpoint_id)
    return respond(endpoint_object(endpoint))


@router.patch(
    "/webhook_endpoints/{endpoint_id}",
    response_model=s.WebhookEndpoint,
    responses=WRITE_ERRORS,
    tags=["endpoints"],
)
def patch_endpoint(
    request: Request,
    body: s.EndpointUpdate,
    endpoint_id: str = EndpointId,
    raw: bytes = Depends(raw_body),
) -> JSONResponse:
    """Change an endpoint's url, event_types, description or enabled; pending deliveries
    follow a new URL at once."""
    settings = state_of(request).settings

    def work(conn: Connection) -> tuple[int, Any]:
        endpoint = _endpoint_in_world(conn, request, endpoint_id)
        require_write(identity_of(request))
        if body.url is None and body.event_types is None and body.description is None:
            if body.enabled is None:
                raise invalid("nothing to change: give url, event_types, description or enabled")
        else:
            endpoint = update_endpoint(
                conn,
                settings,
                endpoint.id,
                url=body.url,
                event_types=body.event_types,
                description=body.description,
            )
        if body.enabled is not None:
            endpoint = _actions.set_enabled(
                conn, settings, endpoint, body.enabled, reason="disabled through the API"
            )
        return 200, endpoint_object(endpoint)

    return write(request, raw, work)


@router.delete(
    "/webhook_endpoints/{endpoint_id}",
    response_model=s.WebhookEndpoint,
    responses=WRITE_ERRORS,
    tags=["endpoints"],
)
def remove_endpoint(
    request: Request, endpoint_id: str = EndpointId, raw: bytes = Depends(raw_body)
) -> JSONResponse:
    """Delete an endpoint: its pending deliveries are cancelled, nothing more is sent to it."""

    def work(conn: Connection) -> tuple[int, Any]:
        _endpoint_in_world(conn, request, endpoint_id)
        require_write(identity_of(request))
        endpoint = delete_endpoint(conn, state_of(request).settings, endpoint_id)
        return 200, {**endpoint_object(endpoint), "deleted": True}

    return write(request, raw, work)


@router.post(
    "/webhook_endpoints/{endpoint_id}/rotate_secret",
    response_model=s.WebhookEndpointWithSecret,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["endpoints"],
)
def rotate_endpoint_secret(
    request: Request, endpoint_id: str = EndpointId, raw: bytes = Depends(raw_body)
) -> JSONResponse:
    """A new signing secret, in this answer only; the old one signs for 24 h more."""

    def work(conn: Connection) -> tuple[int, Any]:
        _endpoint_in_world(conn, request, endpoint_id)
        require_write(identity_of(request))
        endpoint, secret = rotate_secret(conn, state_of(request).settings, endpoint_id)
        return 200, endpoint_object(endpoint, secret=secret)

    return write(request, raw, work)


@router.post(
    "/webhook_endpoints/{endpoint_id}/test",
    status_code=202,
    response_model=s.Event,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["endpoints"],
)
def send_test_event(
    request: Request, endpoint_id: str = EndpointId, raw: bytes = Depends(raw_body)
) -> JSONResponse:
    """Send one webhook.test event, in the endpoint's mode, to this endpoint only."""
    settings = state_of(request).settings

    def work(conn: Connection) -> tuple[int, Any]:
        endpoint = _endpoint_in_world(conn, request, endpoint_id)
        require_write(identity_of(request))
        result = _actions.send_test_event(conn, settings, endpoint)
        envelope = find_event(conn, settings, identity_of(request).world, result.id)
        return 202, event_object(envelope or {})

    return write(request, raw, work)


@router.post(
    "/webhook_endpoints/{endpoint_id}/recover",
    status_code=202,
    response_model=s.WebhookRecovery,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["recoveries"],
)
def recover_endpoint(
    request: Request,
    body: s.RecoverRequest,
    endpoint_id: str = EndpointId,
    raw: bytes = Depends(raw_body),
) -> JSONResponse:
    """Send again what this endpoint missed, as a recovery to poll."""
    settings = state_of(request).settings
    since = parse_time(body.since, "since", ages=True)
    until = parse_time(body.until, "until", ages=True) if body.until else None

    def work(conn: Connection) -> tuple[int, Any]:
        endpoint = _endpoint_in_world(conn, request, endpoint_id)
        require_write(identity_of(request))
        now = clock.now()
        selection = RecoverySelection(
            project_id=endpoint.project_id,
            mode="test" if endpoint.mode == "test" else "live",
            since=since,
            until=until or now,
            endpoint_id=endpoint.id,
            delivery_state=None if body.state == "all" else body.state,
            event_type=body.type,
            include_unrouted=body.include_unrouted,
        )
        return 202, recovery_object(create_recovery(conn, settings, selection, now))

    return write(request, raw, work)


# -- recoveries --------------------------------------------------------------------------------


@router.get(
    "/webhook_recoveries", response_model=s.RecoveryList, responses=ERRORS, tags=["recoveries"]
)
def list_recoveries(
    request: Request,
    limit: int = Limit,
    cursor: str | None = Cursor,
    created_after: str | None = After,
    created_before: str | None = Before,
    endpoint_id: str | None = Query(None, max_length=200),
    state: str | None = Query(None, pattern="^(running|done|cancelled)$"),
) -> JSONResponse:
    """List recoveries, newest first."""
    with reading(request) as conn:
        page = list_recoveries_page(
            conn,
            state_of(request).settings,
            identity_of(request).world,
            clock.now(),
            limit=limit,
            after=position(request, "recoveries", cursor),
            window=window(created_after, created_before),
            endpoint_id=endpoint_id,
            state=state,
        )
    items = [recovery_object(r) for r in page.items]
    return respond(page_body(items, next_cursor(request, "recoveries", page)))


@router.get(
    "/webhook_recoveries/{recovery_id}",
    response_model=s.WebhookRecovery,
    responses=ERRORS,
    tags=["recoveries"],
)
def get_recovery(request: Request, recovery_id: str = Path(max_length=200)) -> JSONResponse:
    """One recovery and its progress."""
    with reading(request) as conn:
        recovery = find_recovery(
            conn, state_of(request).settings, identity_of(request).world, recovery_id, clock.now()
        )
    if recovery is None:
        raise not_found("webhook_recovery", recovery_id)
    return respond(recovery_object(recovery))


@router.post(
    "/webhook_recoveries/{recovery_id}/cancel",
    response_model=s.WebhookRecovery,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["recoveries"],
)
def cancel(
    request: Request, recovery_id: str = Path(max_length=200), raw: bytes = Depends(raw_body)
) -> JSONResponse:
    """Stop a recovery: its replays not yet sent are dropped."""
    settings = state_of(request).settings

    def work(conn: Connection) -> tuple[int, Any]:
        now = clock.now()
        if find_recovery(conn, settings, identity_of(request).world, recovery_id, now) is None:
            raise not_found("webhook_recovery", recovery_id)
        require_write(identity_of(request))
        return 200, recovery_object(cancel_recovery(conn, settings, recovery_id, now))

    return write(request, raw, work)


# -- events ------------------------------------------------------------------------------------


@router.get("/events", response_model=s.EventList, responses=ERRORS, tags=["events"])
def list_events(
    request: Request,
    limit: int = Limit,
    cursor: str | None = Cursor,
    created_after: str | None = After,
    created_before: str | None = Before,
    type: str | None = Query(None, max_length=200, examples=["deployment.succeeded"]),
) -> JSONResponse:
    """List events, newest first."""
    with reading(request) as conn:
        page = list_events_page(
            conn,
            state_of(request).settings,
            identity_of(request).world,
            limit=limit,
            after=position(request, "events", cursor),
            window=window(created_after, created_before),
            event_type=type,
        )
    items = [event_object(e) for e in page.items]
    return respond(page_body(items, next_cursor(request, "events", page)))


@router.post(
    "/events",
    status_code=201,
    response_model=s.Event,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["events"],
)
def create_event(
    request: Request, body: s.EventCreate, raw: bytes = Depends(raw_body)
) -> JSONResponse:
    """Publish an event in the key's project and mode: delivered to every subscribed endpoint."""
    identity = identity_of(request)
    require_write(identity)
    settings = state_of(request).settings

    def work(conn: Connection) -> tuple[int, Any]:
        result = publish_event(
            conn,
            settings,
            project_id=identity.project_id,
            type=body.type,
            data=body.data,
            mode=identity.mode,
        )
        return 201, event_object(find_event(conn, settings, identity.world, result.id) or {})

    return write(request, raw, work)


@router.post(
    "/events/simulate",
    status_code=202,
    response_model=s.Event,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["events"],
)
def simulate_event(
    request: Request, body: s.SimulateRequest, raw: bytes = Depends(raw_body)
) -> JSONResponse:
    """Publish a simulated test event (test keys only), as `webhooks trigger` does."""
    identity = identity_of(request)
    if identity.mode != "test":
        raise forbidden("simulated events are for test keys only (sk_test_…)")
    require_write(identity)
    settings = state_of(request).settings

    def work(conn: Connection) -> tuple[int, Any]:
        if body.endpoint_id is not None:
            _endpoint_in_world(conn, request, body.endpoint_id)
        data = body.data if body.data is not None else example_data(body.type)
        result = trigger_event(
            conn,
            settings,
            project_id=identity.project_id,
            event_type=body.type,
            data=data,
            endpoint_id=body.endpoint_id,
        )
        return 202, event_object(find_event(conn, settings, identity.world, result.id) or {})

    return write(request, raw, work)


@router.get(
    "/events/{event_id}", response_model=s.EventWithDeliveries, responses=ERRORS, tags=["events"]
)
def get_event(request: Request, event_id: str = EventId) -> JSONResponse:
    """One event, with its deliveries and their attempts."""
    settings = state_of(request).settings
    world = identity_of(request).world
    with reading(request) as conn:
        envelope = find_event(conn, settings, world, event_id)
        if envelope is None:
            raise not_found("event", event_id)
        deliveries = get_deliveries(conn, settings, event_id)
        summaries = list_deliveries_page(
            conn, settings, world, limit=len(deliveries) or 1, event_id=event_id
        ).items
    return respond(event_object(envelope, deliveries, {d.id: d for d in summaries}))


@router.post(
    "/events/{event_id}/replay",
    status_code=202,
    response_model=s.Queued,
    responses=WRITE_ERRORS,
    openapi_extra=IdempotencyKeyDoc,
    tags=["events"],
)
def replay(
    request: Request,
    body: s.ReplayRequest | None = None,
    event_id: str = EventId,
    raw: bytes = Depends(raw_body),
) -> JSONResponse:
    """Send the event again now, to all its endpoints or one, as new attempts."""
    settings = state_of(request).settings
    endpoint_id = body.endpoint_id if body is not None else None

    def work(conn: Connection) -> tuple[int, Any]:
        if find_event(conn, settings, identity_of(request).world, event_id) is None:
            raise not_found("event", event_id)
        if endpoint_id is not None:
            _endpoint_in_world(conn, request, endpoint_id)
        require_write(identity_of(request))
        result = replay_event(conn, settings, event_id, endpoint_id=endpoint_id)
        return 202, {"queued": result.queued}

    return write(request, raw, work)


# -- deliveries and attempts -------------------------------------------------------------------


@router.get(
    "/webhook_deliveries", response_model=s.DeliveryList, responses=ERRORS, tags=["deliveries"]
)
def list_deliveries(
    request: Request,
    limit: int = Limit,
    cursor: str | None = Cursor,
    created_after: str | None = After,
    created_before: str | None = Before,
    state: str | None = Query(None, pattern="^(" + "|".join(DELIVERY_STATES) + ")$"),
    endpoint_id: str | None = Query(None, max_length=200),
    event_id: str | None = Query(None, max_length=200),
) -> JSONResponse:
    """List deliveries, newest first."""
    with reading(request) as conn:
        page = list_deliveries_page(
            conn,
            state_of(request).settings,
            identity_of(request).world,
            limit=limit,
            after=position(request, "deliveries", cursor),
            window=window(created_after, created_before),
            state=state,
            endpoint_id=endpoint_id,
            event_id=event_id,
        )
    items = [delivery_object(d) for d in page.items]
    return respond(page_body(items, next_cursor(request, "deliveries", page)))


@router.get(
    "/webhook_deliveries/{delivery_id}",
    response_model=s.WebhookDelivery,
    responses=ERRORS,
    tags=["deliveries"],
)
def get_delivery(request: Request, delivery_id: str = Path(max_length=200)) -> JSONResponse:
    """One delivery."""
    with reading(request) as conn:
        found = find_delivery(
            conn, state_of(request).settings, identity_of(request).world, delivery_id
        )
    if found is None:
        raise not_found("webhook_delivery", delivery_id)
    return respond(delivery_object(found))


@router.get("/webhook_attempts", response_model=s.AttemptList, responses=ERRORS, tags=["attempts"])
def list_attempts(
    request: Request,
    limit: int = Limit,
    cursor: str | None = Cursor,
    created_after: str | None = After,
    created_before: str | None = Before,
    event_id: str | None = Query(None, max_length=200),
    delivery_id: str | None = Query(None, max_length=200),
    endpoint_id: str | None = Query(None, max_length=200),
    status: str | None = Query(None, pattern="^(" + "|".join(ATTEMPT_STATUSES) + ")$"),
) -> JSONResponse:
    """List attempts, newest first (created_after/before apply to their start)."""
    after = position(request, "attempts", cursor)
    if after is not None and not after.id.isdigit():
        raise invalid("cursor is not one this list gave out", param="cursor")
    with reading(request) as conn:
        page = list_attempts_page(
            conn,
            state_of(request).settings,
            identity_of(request).world,
            limit=limit,
            after=after,
            window=window(created_after, created_before),
            event_id=event_id,
            delivery_id=delivery_id,
            endpoint_id=endpoint_id,
            status=status,
        )
    items = [attempt_object(a) for a in page.items]
    return respond(page_body(items, next_cursor(request, "attempts", page)))


@router.get(
    "/webhook_attempts/{attempt_id}",
    response_model=s.WebhookAttemptFull,
    responses=ERRORS,
    tags=["attempts"],
)
def get_attempt(
    request: Request, attempt_id: str = Path(max_length=40, examples=["att_1042"])
) -> JSONResponse:
    """One attempt in full: request and response headers and body."""
    number = attempt_id.removeprefix("att_")
    if not attempt_id.startswith("att_") or not number.isdigit() or len(number) > 18:
        raise not_found("webhook_attempt", attempt_id)
    with reading(request) as conn:
        found = find_attempt(
            conn, state_of(request).settings, identity_of(request).world, int(number)
        )
    if found is None:
        raise not_found("webhook_attempt", attempt_id)
    return respond(attempt_object(found, full=True))


__all__ = ["ApiError", "router"]
