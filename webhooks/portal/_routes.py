"""The portal's pages and actions, scoped to the viewer's session (one project, one mode).

Pages (GET): the endpoints with their health and last 24 h; one endpoint with its
deliveries (filtered by state, event type and time, paged with the API's cursors); one
delivery with its attempts; one attempt in full; the add and edit forms.

Actions (POST, each checking the session's CSRF token first, then finding the object in the
session's world as the API does for a key, then calling the same domain functions as the API
routes): replay an event to one endpoint or all, send a test event, add, edit, disable and
enable an endpoint, rotate its secret (the new secret is on the answer's page, only there).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool

from webhooks import clock
from webhooks.activity import NO_ACTIVITY, endpoint_activity
from webhooks.api import _actions
from webhooks.api._cursors import decode_cursor, encode_cursor
from webhooks.api._errors import ApiError
from webhooks.api._handling import parse_time, state_of
from webhooks.api._render import attempt_id
from webhooks.database import translate_errors
from webhooks.endpoints import rotate_secret, update_endpoint
from webhooks.errors import (
    EndpointNotFound,
    EventNotFound,
    InvalidArgument,
    InvalidEndpointURL,
    InvalidEventType,
    InvalidPortalLink,
)
from webhooks.health import failure_reason
from webhooks.models import DELIVERY_STATES, Endpoint, customer_error_message
from webhooks.pages import (
    Position,
    Scope,
    Window,
    find_attempt,
    find_delivery,
    find_endpoint,
    find_event,
    list_attempts_page,
    list_deliveries_page,
    list_endpoints_page,
)
from webhooks.portal._web import (
    PREFIX,
    PortalError,
    Viewer,
    check_csrf,
    current_viewer,
    link_error,
    page,
    read_form,
    redirect,
    require_secure,
    set_session_cookie,
)
from webhooks.portal_sessions import check_portal_link, open_portal_session
from webhooks.replay import replay_event

T = TypeVar("T")
PAGE_SIZE = 20
ACTIVITY_WINDOW = timedelta(hours=24)
PORTAL_DISABLED_REASON = "disabled in the portal"
# What a finished action says on the page it leads to: fixed texts, chosen by a code in the
# URL, so nothing a visitor puts in a URL is shown as a message.
NOTICES = {
    "replayed": "Replay queued: the new attempt appears below within seconds (reload to see it).",
    "replay-held": "Nothing was queued: a replay of this event is already waiting.",
    "tested": "Test event sent: its attempt appears below within seconds (reload to see it).",
    "disabled": "Endpoint disabled: events are kept for it and sent once it is enabled again.",
    "enabled": "Endpoint enabled: events held while it was disabled are on their way.",
    "saved": "Changes saved.",
}

router = APIRouter(prefix=PREFIX, include_in_schema=False)
# Every page but the link's: the visitor's session, or the error page that answers instead.
SignedIn = Annotated[Viewer, Depends(current_viewer)]


async def _in_transaction(request: Request, work: Callable[[Connection], T]) -> T:
    state = state_of(request)

    def run() -> T:
        with translate_errors(state.settings), state.engine.begin() as conn:
            return work(conn)

    return await run_in_threadpool(run)


def _not_found(kind: str) -> PortalError:
    return PortalError(
        404,
        f"No such {kind}",
        f"This {kind} is not in this portal's project and mode. Go back to the endpoints.",
    )


def _endpoint(conn: Connection, request: Request, scope: Scope, endpoint_id: str) -> Endpoint:
    endpoint = find_endpoint(conn, state_of(request).settings, scope, endpoint_id)
    if endpoint is None or endpoint.is_deleted:
        raise _not_found("endpoint")
    return endpoint


def _notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("done", ""))


def _cursor(request: Request, scope: Scope, list_name: str) -> Position | None:
    cursor = request.query_params.get("cursor")
    if not cursor:
        return None
    key = state_of(request).cursor_key
    try:
        return decode_cursor(key, scope, list_name, cursor)
    except ApiError as exc:
        raise PortalError(400, "That page link is not valid", exc.message) from exc


def _next(request: Request, scope: Scope, list_name: str, position: Position | None) -> str | None:
    if position is None:
        return None
    return encode_cursor(state_of(request).cursor_key, scope, list_name, position)


# -- signing in ----------------------------------------------------------------------------


@router.get("/enter/{token}")
async def enter_page(request: Request, token: str) -> Response:
    """The page a link opens: it uses nothing up (mail scanners and chat previews fetch
    links), and posts itself to `enter` at once in a browser (a button without script)."""
    require_secure(request)
    state = state_of(request)

    def check() -> Any:
        with translate_errors(state.settings), state.engine.connect() as conn:
            return check_portal_link(conn, state.settings.db_schema, token[:200], clock.now())

    try:
        await run_in_threadpool(check)
    except InvalidPortalLink as exc:
        raise link_error(exc, is_session=False) from exc
    return page(request, "enter.html", token=token[:200], title="Opening the portal")


@router.post("/enter/{token}")
async def enter(request: Request, token: str) -> Response:
    """Exchange a single-use link for a session cookie, then go to a URL without the token
    (a 303 replaces the link in the browser's history)."""
    require_secure(request)
    state = state_of(request)

    def exchange() -> Any:
        with translate_errors(state.settings), state.engine.begin() as conn:
            return open_portal_session(conn, state.settings.db_schema, token[:200], clock.now())

    try:
        session, session_token = await run_in_threadpool(exchange)
    except InvalidPortalLink as exc:
        raise link_error(exc, is_session=False) from exc
    response = redirect(request, "/")
    set_session_cookie(request, response, session_token, session)
    return response


# -- pages ---------------------------------------------------------------------------------


@router.get("/")
async def endpoints_page(request: Request, viewer: SignedIn) -> Response:
    """The endpoints, their health, success over 24 h and last attempt."""
    scope = viewer.session.scope
    after = _cursor(request, scope, "endpoints")
    settings = state_of(request).settings

    def read(conn: Connection) -> Any:
        found = list_endpoints_page(conn, settings, scope, limit=PAGE_SIZE, after=after)
        since = clock.now() - ACTIVITY_WINDOW
        return found, endpoint_activity(conn, settings, [e.id for e in found.items], since)

    found, activity = await _in_transaction(request, read)
    rows = [(e, activity.get(e.id, NO_ACTIVITY)) for e in found.items]
    return page(
        request,
        "endpoints.html",
        viewer=viewer,
        rows=rows,
        next_cursor=_next(request, scope, "endpoints", found.next),
        is_first_page=after is None,
        notice=_notice(request),
    )


@router.get("/endpoints/new")
async def new_endpoint_page(request: Request, viewer: SignedIn) -> Response:
    """The form that adds an endpoint."""
    return page(request, "endpoint_form.html", viewer=viewer, endpoint=None, values={}, error=None)


@router.get("/endpoints/{endpoint_id}")
async def endpoint_page(request: Request, endpoint_id: str, viewer: SignedIn) -> Response:
    """One endpoint and its deliveries, filtered and paged."""
    scope = viewer.session.scope
    settings = state_of(request).settings
    params = request.query_params
    state = params.get("state") or None
    if state is not None and state not in DELIVERY_STATES:
        state = None
    event_type = (params.get("type") or "").strip()[:200] or None
    filters = {
        "state": state or "",
        "type": event_type or "",
        "since": (params.get("since") or "").strip()[:60],
        "until": (params.get("until") or "").strip()[:60],
    }
    filter_error = None
    try:
        window = Window(
            created_after=parse_time(filters["since"], "since", ages=True)
            if filters["since"]
            else None,
            created_before=parse_time(filters["until"], "until", ages=True)
            if filters["until"]
            else None,
        )
    except ApiError as exc:
        filter_error, window = exc.message, Window()
    after = _cursor(request, scope, "deliveries")

    def read(conn: Connection) -> Any:
        endpoint = find_endpoint(conn, settings, scope, endpoint_id)
        if endpoint is None:
            raise _not_found("endpoint")
        found = list_deliveries_page(
            conn,
            settings,
            scope,
            limit=PAGE_SIZE,
            after=after,
            window=window,
            state=state,
            endpoint_id=endpoint.id,
            event_type=event_type,
        )
        activity = endpoint_activity(
            conn, settings, [endpoint.id], clock.now() - ACTIVITY_WINDOW
        ).get(endpoint.id, NO_ACTIVITY)
        return endpoint, found, activity

    endpoint, found, activity = await _in_transaction(request, read)
    is_filtered = any(filters.values())
    return page(
        request,
        "endpoint.html",
        viewer=viewer,
        endpoint=endpoint,
        activity=activity,
        deliveries=[(d, _summary(d.last_status, d.last_error_kind)) for d in found.items],
        filters=filters,
        filter_error=filter_error,
        is_filtered=is_filtered,
        states=DELIVERY_STATES,
        next_cursor=_next(request, scope, "deliveries", found.next),
        is_first_page=after is None,
        notice=_notice(request),
    )


def _summary(status: int | None, error_kind: str | None) -> str:
    """A last attempt's outcome in a few words, safe to show (no internal address)."""
    if status is None and error_kind is None:
        return ""
    if error_kind is None and status is not None and 200 <= status < 300:
        return f"HTTP {status}"
    return failure_reason(status, error_kind, None)


@router.get("/deliveries/{delivery_id}")
async def delivery_page(request: Request, delivery_id: str, viewer: SignedIn) -> Response:
    """One delivery: its event and every attempt, with the replay buttons."""
    scope = viewer.session.scope
    settings = state_of(request).settings

    def read(conn: Connection) -> Any:
        delivery = find_delivery(conn, settings, scope, delivery_id)
        if delivery is None:
            raise _not_found("delivery")
        endpoint = find_endpoint(conn, settings, scope, delivery.endpoint_id)
        envelope = find_event(conn, settings, scope, delivery.event_id)
        attempts = list_attempts_page(
            conn, settings, scope, limit=100, delivery_id=delivery.id
        ).items
        siblings = list_deliveries_page(
            conn, settings, scope, limit=100, event_id=delivery.event_id
        ).items
        return delivery, endpoint, envelope, attempts, len(siblings)

    delivery, endpoint, envelope, attempts, endpoint_count = await _in_transaction(request, read)
    return page(
        request,
        "delivery.html",
        viewer=viewer,
        delivery=delivery,
        endpoint=endpoint,
        envelope=envelope,
        attempts=[(a, attempt_id(a), _summary(a.response_status, a.error_kind)) for a in attempts],
        endpoint_count=endpoint_count,
        notice=_notice(request),
    )


@router.get("/attempts/{public_id}")
async def attempt_page(request: Request, public_id: str, viewer: SignedIn) -> Response:
    """One attempt in full: what was sent, what came back."""
    number = public_id.removeprefix("att_")
    if not public_id.startswith("att_") or not number.isdigit() or len(number) > 18:
        raise _not_found("attempt")
    scope = viewer.session.scope
    settings = state_of(request).settings

    def read(conn: Connection) -> Any:
        attempt = find_attempt(conn, settings, scope, int(number))
        if attempt is None:
            raise _not_found("attempt")
        envelope = find_event(conn, settings, scope, attempt.event_id or "")
        return attempt, envelope

    attempt, envelope = await _in_transaction(request, read)
    return page(
        request,
        "attempt.html",
        viewer=viewer,
        attempt=attempt,
        public_id=public_id,
        envelope=envelope,
        outcome=_summary(attempt.response_status, attempt.error_kind),
        error_message=customer_error_message(attempt),
    )


@router.get("/endpoints/{endpoint_id}/edit")
async def edit_endpoint_page(request: Request, endpoint_id: str, viewer: SignedIn) -> Response:
    """The form that changes an endpoint's URL, event types and description."""
    scope = viewer.session.scope
    endpoint = await _in_transaction(
        request, lambda conn: _endpoint(conn, request, scope, endpoint_id)
    )
    values = {
        "url": endpoint.url,
        "event_types": ", ".join(endpoint.event_types),
        "description": endpoint.description or "",
    }
    return page(
        request, "endpoint_form.html", viewer=viewer, endpoint=endpoint, values=values, error=None
    )


# -- actions -------------------------------------------------------------------------------


async def _checked_form(request: Request) -> dict[str, str]:
    form = await read_form(request)
    check_csrf(request, form)
    return form


def _event_types(text: str) -> list[str]:
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


REFUSALS = (InvalidEndpointURL, InvalidEventType, InvalidArgument)


@router.post("/endpoints")
async def add_endpoint_action(request: Request, viewer: SignedIn) -> Response:
    """Add an endpoint; its secret is shown on the answer, once."""
    form = await _checked_form(request)
    values = {k: form.get(k, "") for k in ("url", "event_types", "description")}
    settings = state_of(request).settings

    def work(conn: Connection) -> tuple[Endpoint, str]:
        return _actions.create_endpoint(
            conn,
            settings,
            viewer.session.scope,
            url=values["url"].strip(),
            event_types=_event_types(values["event_types"]),
            description=values["description"].strip() or None,
        )

    try:
        endpoint, secret = await _in_transaction(request, work)
    except REFUSALS as exc:
        return page(
            request,
            "endpoint_form.html",
            viewer=viewer,
            status=422,
            endpoint=None,
            values=values,
            error=str(exc),
        )
    return page(
        request, "secret.html", viewer=viewer, endpoint=endpoint, secret=secret, is_new=True
    )


@router.post("/endpoints/{endpoint_id}/edit")
async def edit_endpoint_action(request: Request, endpoint_id: str, viewer: SignedIn) -> Response:
    """Change an endpoint's URL, event types and description."""
    form = await _checked_form(request)
    values = {k: form.get(k, "") for k in ("url", "event_types", "description")}
    settings = state_of(request).settings
    scope = viewer.session.scope

    def work(conn: Connection) -> Endpoint:
        endpoint = _endpoint(conn, request, scope, endpoint_id)
        # Only what changed: a URL given again unchanged must not reschedule pending retries.
        url = values["url"].strip()
        event_types = _event_types(values["event_types"])
        description = values["description"].strip()
        changes: dict[str, Any] = {}
        if url != endpoint.url:
            changes["url"] = url
        if tuple(event_types) != endpoint.event_types:
            changes["event_types"] = event_types
        if description != (endpoint.description or ""):
            changes["description"] = description
        if not changes:
            return endpoint
        return update_endpoint(conn, settings, endpoint.id, **changes)

    try:
        await _in_transaction(request, work)
    except REFUSALS as exc:
        endpoint = await _in_transaction(
            request, lambda conn: _endpoint(conn, request, scope, endpoint_id)
        )
        return page(
            request,
            "endpoint_form.html",
            viewer=viewer,
            status=422,
            endpoint=endpoint,
            values=values,
            error=str(exc),
        )
    return redirect(request, f"/endpoints/{endpoint_id}", done="saved")


@router.post("/endpoints/{endpoint_id}/{action}")
async def endpoint_action(
    request: Request, endpoint_id: str, action: str, viewer: SignedIn
) -> Response:
    """Send a test event, disable, enable, or rotate the secret (shown on the answer, once)."""
    if action not in ("test", "disable", "enable", "rotate-secret"):
        raise _not_found("action")
    await _checked_form(request)
    settings = state_of(request).settings
    scope = viewer.session.scope

    def work(conn: Connection) -> tuple[Endpoint, str | None]:
        endpoint = _endpoint(conn, request, scope, endpoint_id)
        if action == "test":
            _actions.send_test_event(conn, settings, endpoint)
        elif action in ("disable", "enable"):
            endpoint = _actions.set_enabled(
                conn, settings, endpoint, action == "enable", reason=PORTAL_DISABLED_REASON
            )
        else:
            endpoint, secret = rotate_secret(conn, settings, endpoint.id)
            return endpoint, secret
        return endpoint, None

    endpoint, secret = await _in_transaction(request, work)
    if secret is not None:
        return page(
            request, "secret.html", viewer=viewer, endpoint=endpoint, secret=secret, is_new=False
        )
    done = {"test": "tested", "disable": "disabled", "enable": "enabled"}[action]
    return redirect(request, f"/endpoints/{endpoint_id}", done=done)


@router.post("/events/{event_id}/replay")
async def replay_action(request: Request, event_id: str, viewer: SignedIn) -> Response:
    """Replay an event to one of its endpoints (``endpoint_id``) or to all of them."""
    form = await _checked_form(request)
    settings = state_of(request).settings
    scope = viewer.session.scope
    endpoint_id = form.get("endpoint_id") or None
    back = form.get("delivery_id") or ""

    def work(conn: Connection) -> int:
        if find_event(conn, settings, scope, event_id) is None:
            raise _not_found("event")
        if endpoint_id is not None:
            _endpoint(conn, request, scope, endpoint_id)
        try:
            return replay_event(conn, settings, event_id, endpoint_id=endpoint_id).queued
        except (EventNotFound, EndpointNotFound) as exc:
            raise _not_found("event") from exc
        except InvalidArgument as exc:
            raise PortalError(422, "That replay was refused", str(exc)) from exc

    queued = await _in_transaction(request, work)
    done = "replayed" if queued else "replay-held"
    if back and back.startswith("dlv_"):
        return redirect(request, f"/deliveries/{back}", done=done)
    if endpoint_id is not None:
        return redirect(request, f"/endpoints/{endpoint_id}", done=done)
    return redirect(request, "/", done=done)
