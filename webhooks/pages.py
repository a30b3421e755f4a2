"""Pages of one project's objects in one mode, newest first, for the faces customers use.

The HTTP API (and the portal) list endpoints, events, deliveries, attempts and recoveries a
page at a time. Every list here is a keyset walk: a page ends at a `Position` (the last row's
sort key), and the next page starts strictly after it, so rows inserted meanwhile (always
newer, hence before the first page) never make a later page repeat or skip an older row.

Each query is built from the filters actually given (their values always bound, never
written into the text), so the planner sees exactly which columns are fixed and reads an
index whose order is the page's order, stopping after LIMIT rows: a page costs its size
however long the history is. Which index serves which filters (migrations 0013, 0015, 0017;
`tests/integration/test_api_plans.py` EXPLAINs every combination):

- endpoints: ``endpoints_project_mode_created (project_id, mode, created_at, id)``;
- events: ``events_project_created (project_id, mode, created_at, id)``; with ``type``,
  ``events_project_type_created (project_id, mode, type, created_at, id)``;
- deliveries: ``deliveries_project_mode_created (project_id, mode, created_at, id)``; with
  ``state``, ``deliveries_project_state_created (project_id, mode, state, created_at, id)``;
  with ``endpoint_id``, ``deliveries_endpoint_created (endpoint_id, created_at, id)`` (and
  ``deliveries_endpoint_state_created`` with a state too); with ``event_id``,
  ``deliveries_event_created (event_id, created_at, id)`` (an event's few deliveries: other
  filters are checked on those rows);
- attempts, by id (insertion order): ``attempts_project_mode (project_id, mode, id)``; with
  ``endpoint_id``, ``attempts_project_mode_endpoint (project_id, mode, endpoint_id, id)``;
  ``status=failed`` reads the partial indexes of failed attempts only
  (``attempts_failed``, ``attempts_endpoint_failed``), small while most attempts succeed;
  ``status=succeeded`` walks the general one, skipping failures; with ``event_id`` or
  ``delivery_id``, ``attempts_event_id (event_id, id)`` or ``attempts_delivery_id
  (delivery_id, id)``: a handful of rows. The time window of attempts (their start) is checked
  on the rows walked, not a bound of the walk;
- recoveries: ``recoveries_project_created (project_id, mode, created_at, id)``; with
  ``endpoint_id``, ``recoveries_endpoint_created (endpoint_id, created_at, id)``; ``state`` is
  checked on the rows walked (a project has few recoveries, most of them finished).

A position is plain data; making it opaque and tamper-evident is the face's business.
Everything is scoped by project and mode in SQL: an id of another project or mode is simply
not found.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.endpoints import ENDPOINT_COLUMNS, endpoint_from_row
from webhooks.models import Attempt, DeliverySummary, Endpoint
from webhooks.recovery import Recovery, get_recovery, recoveries_status, recovery_from_row
from webhooks.settings import Settings

T = TypeVar("T")

MAX_PAGE = 100


@dataclass(frozen=True)
class Scope:
    """Whose objects: one project in one mode (an API key's world)."""

    project_id: str
    mode: str


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last row's creation time (or None, for attempts) and id."""

    created_at: datetime | None
    id: str


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page, and where the next one starts (None: this is the last)."""

    items: list[T]
    next: Position | None

    @property
    def has_more(self) -> bool:
        """True if another page follows."""
        return self.next is not None


@dataclass(frozen=True)
class Window:
    """Filters every list shares: created in [after, before), where the list has a time."""

    created_after: datetime | None = None
    created_before: datetime | None = None


def _page(rows: Sequence[Any], limit: int, items: list[T], key: str = "created_at") -> Page[T]:
    if len(rows) <= limit:
        return Page(items=items[:limit], next=None)
    last = rows[limit - 1]
    at = getattr(last, key) if key else None
    return Page(items=items[:limit], next=Position(created_at=at, id=str(last.id)))


@dataclass
class Where:
    """A WHERE clause of the filters actually given: each condition's SQL and its values."""

    conditions: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(self, condition: str, **params: Any) -> Where:
        """Require ``condition`` (its values bound as ``params``)."""
        self.conditions.append(condition)
        self.params.update(params)
        return self

    def when(self, value: Any, condition: str, name: str) -> Where:
        """Require ``condition`` with ``:name`` bound to ``value``, if ``value`` is given."""
        return self if value is None else self.add(condition, **{name: value})

    @property
    def sql(self) -> str:
        """The conditions, joined by AND."""
        return " AND ".join(self.conditions)


def scoped(t: str, scope: Scope) -> Where:
    """Rows of table alias ``t`` in ``scope``."""
    return Where().add(
        f"{t}.project_id = :project_id AND {t}.mode = :mode",
        project_id=scope.project_id,
        mode=scope.mode,
    )


def _created(where: Where, t: str, after: Position | None, window: Window) -> Where:
    # The row comparison is one range of the (…, created_at, id) index, not a filter.
    if after is not None:
        where.add(
            f"({t}.created_at, {t}.id) < (:after_at, :after_id)",
            after_at=after.created_at,
            after_id=after.id,
        )
    where.when(window.created_after, f"{t}.created_at >= :created_after", "created_after")
    return where.when(window.created_before, f"{t}.created_at < :created_before", "created_before")


def page_statement(query: str, where: Where, limit: int) -> tuple[str, dict[str, Any]]:
    """A list's statement (``{s}`` still to be put in) with ``where``, and its values: one
    row more than ``limit``, to know whether another page follows."""
    return query.replace("{where}", where.sql), {**where.params, "limit": limit + 1}


def _objects(make: Callable[..., T], rows: Sequence[Any]) -> list[T]:
    """One object a row, its fields named by the columns. The names are read once: a row's
    ``_mapping`` builds them again for each row, a fifth of a 100-row page's cost."""
    if not rows:
        return []
    names = rows[0]._fields
    return [make(**dict(zip(names, row, strict=True))) for row in rows]


def _run(
    conn: Connection, settings: Settings, query: str, where: Where, limit: int
) -> Sequence[Any]:
    statement, params = page_statement(query, where, limit)
    return conn.execute(sql(statement, settings.db_schema), params).all()


ENDPOINT_PAGE = (
    f"SELECT {ENDPOINT_COLUMNS} FROM {{s}}.endpoints e WHERE {{where}} "
    "AND e.deleted_at IS NULL ORDER BY e.created_at DESC, e.id DESC LIMIT :limit"
)


def endpoints_where(
    scope: Scope, after: Position | None = None, window: Window = Window()
) -> Where:
    """The endpoint list's conditions."""
    return _created(scoped("e", scope), "e", after, window)


def list_endpoints_page(
    conn: Connection,
    settings: Settings,
    scope: Scope,
    *,
    limit: int,
    after: Position | None = None,
    window: Window = Window(),
) -> Page[Endpoint]:
    """The scope's endpoints (deleted ones left out), newest first."""
    rows = _run(conn, settings, ENDPOINT_PAGE, endpoints_where(scope, after, window), limit)
    return _page(rows, limit, [endpoint_from_row(r) for r in rows])


EVENT_PAGE = (
    "SELECT ev.id, ev.payload, ev.mode, ev.created_at FROM {s}.events ev WHERE {where} "
    "ORDER BY ev.created_at DESC, ev.id DESC LIMIT :limit"
)
EVENT = "SELECT payload, mode FROM {s}.events WHERE id = :id AND project_id = :project_id"


def _envelope(payload: str, mode: str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(payload)
    envelope.setdefault("mode", mode)
    return envelope


def events_where(
    scope: Scope,
    after: Position | None = None,
    window: Window = Window(),
    event_type: str | None = None,
) -> Where:
    """The event list's conditions."""
    where = _created(scoped("ev", scope), "ev", after, window)
    return where.when(event_type, "ev.type = :event_type", "event_type")


def list_events_page(
    conn: Connection,
    settings: Settings,
    scope: Scope,
    *,
    limit: int,
    after: Position | None = None,
    window: Window = Window(),
    event_type: str | None = None,
) -> Page[dict[str, Any]]:
    """The scope's events (their envelopes as sent), newest first."""
    where = events_where(scope, after, window, event_type)
    rows = _run(conn, settings, EVENT_PAGE, where, limit)
    return _page(rows, limit, [_envelope(r.payload, r.mode) for r in rows])


def find_event(
    conn: Connection, settings: Settings, scope: Scope, event_id: str
) -> dict[str, Any] | None:
    """The event's envelope if it is in the scope, else None."""
    row = conn.execute(
        sql(EVENT + " AND mode = :mode", settings.db_schema),
        {"id": event_id, "project_id": scope.project_id, "mode": scope.mode},
    ).one_or_none()
    return None if row is None else _envelope(row.payload, row.mode)


_DELIVERY_SELECT = """
SELECT d.id, d.event_id, ev.type AS event_type, d.endpoint_id, d.project_id, d.mode, d.state,
       d.attempt_count, last.response_status AS last_status, last.error_kind AS last_error_kind,
       last.error_message AS last_error_message, d.next_attempt_at, d.created_at, d.updated_at
FROM {s}.deliveries d
JOIN {s}.events ev ON ev.id = d.event_id
LEFT JOIN LATERAL (
    SELECT a.response_status, a.error_kind, a.error_message FROM {s}.attempts a
    WHERE a.delivery_id = d.id ORDER BY a.number DESC, a.id DESC LIMIT 1
) last ON true
"""
DELIVERY_PAGE = _DELIVERY_SELECT + (
    "WHERE {where} ORDER BY d.created_at DESC, d.id DESC LIMIT :limit"
)
DELIVERY = _DELIVERY_SELECT + "WHERE d.project_id = :project_id AND d.mode = :mode AND d.id = :id"


def deliveries_where(
    scope: Scope,
    after: Position | None = None,
    window: Window = Window(),
    *,
    state: str | None = None,
    endpoint_id: str | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
) -> Where:
    """The delivery list's conditions."""
    where = _created(scoped("d", scope), "d", after, window)
    where.when(endpoint_id, "d.endpoint_id = :endpoint_id", "endpoint_id")
    where.when(event_id, "d.event_id = :event_id", "event_id")
    where.when(state, "d.state = :state", "state")
    return where.when(event_type, "ev.type = :event_type", "event_type")


def list_deliveries_page(
    conn: Connection,
    settings: Settings,
    scope: Scope,
    *,
    limit: int,
    after: Position | None = None,
    window: Window = Window(),
    state: str | None = None,
    endpoint_id: str | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
) -> Page[DeliverySummary]:
    """The scope's deliveries, newest first, each with its last attempt's outcome."""
    where = deliveries_where(
        scope,
        after,
        window,
        state=state,
        endpoint_id=endpoint_id,
        event_id=event_id,
        event_type=event_type,
    )
    rows = _run(conn, settings, DELIVERY_PAGE, where, limit)
    return _page(rows, limit, _objects(DeliverySummary, rows))


def find_delivery(
    conn: Connection, settings: Settings, scope: Scope, delivery_id: str
) -> DeliverySummary | None:
    """One delivery if it is in the scope, else None."""
    row = conn.execute(
        sql(DELIVERY, settings.db_schema),
        {"id": delivery_id, "project_id": scope.project_id, "mode": scope.mode},
    ).one_or_none()
    return None if row is None else DeliverySummary(**row._mapping)


_ATTEMPT_SELECT = """
SELECT a.id, a.number, a.trigger, a.delivery_id, a.event_id, a.endpoint_id, a.mode,
       a.started_at, a.duration_ms, a.request_url, a.response_status, a.error_kind,
       a.error_message, a.response_body{full}
FROM {{s}}.attempts a
"""
ATTEMPT_PAGE = _ATTEMPT_SELECT.format(full="") + "WHERE {where} ORDER BY a.id DESC LIMIT :limit"
ATTEMPT = (
    _ATTEMPT_SELECT.format(full=", a.request_headers, a.response_headers")
    + "WHERE a.project_id = :project_id AND a.mode = :mode AND a.id = :id"
)
ATTEMPT_STATUSES = ("succeeded", "failed")
# An attempt succeeded: a 2xx and no error. Written exactly as in the partial indexes of
# failed attempts (migration 0017), so that the planner can prove a query reads only them.
SUCCEEDED = "coalesce(a.error_kind IS NULL AND a.response_status BETWEEN 200 AND 299, false)"


def attempts_where(
    scope: Scope,
    after: Position | None = None,
    window: Window = Window(),
    *,
    event_id: str | None = None,
    delivery_id: str | None = None,
    endpoint_id: str | None = None,
    status: str | None = None,
) -> Where:
    """The attempt list's conditions (``window`` applies to their start times)."""
    where = scoped("a", scope)
    if after is not None:
        where.add("a.id < :after_id", after_id=int(after.id))
    where.when(window.created_after, "a.started_at >= :created_after", "created_after")
    where.when(window.created_before, "a.started_at < :created_before", "created_before")
    where.when(event_id, "a.event_id = :event_id", "event_id")
    where.when(delivery_id, "a.delivery_id = :delivery_id", "delivery_id")
    where.when(endpoint_id, "a.endpoint_id = :endpoint_id", "endpoint_id")
    if status is not None:
        where.add(outcome_is(status))
    return where


def outcome_is(status: str) -> str:
    """The condition for attempts that ``succeeded`` or ``failed``: one of two fixed texts
    (never the value given), so the planner sees which, and ``failed`` reads the partial
    indexes of failed attempts."""
    return SUCCEEDED if status == "succeeded" else f"NOT {SUCCEEDED}"


def list_attempts_page(
    conn: Connection,
    settings: Settings,
    scope: Scope,
    *,
    limit: int,
    after: Position | None = None,
    window: Window = Window(),
    event_id: str | None = None,
    delivery_id: str | None = None,
    endpoint_id: str | None = None,
    status: str | None = None,
) -> Page[Attempt]:
    """The scope's attempts, newest first (``window`` applies to their start times).

    Args:
        status: ``succeeded`` (a 2xx and no error) or ``failed`` (anything else).
    """
    where = attempts_where(
        scope,
        after,
        window,
        event_id=event_id,
        delivery_id=delivery_id,
        endpoint_id=endpoint_id,
        status=status,
    )
    rows = _run(conn, settings, ATTEMPT_PAGE, where, limit)
    return _page(rows, limit, _objects(Attempt, rows), key="")


def find_attempt(
    conn: Connection, settings: Settings, scope: Scope, attempt_id: int
) -> Attempt | None:
    """One attempt in full (request and response headers too) if it is in the scope."""
    row = conn.execute(
        sql(ATTEMPT, settings.db_schema),
        {"id": attempt_id, "project_id": scope.project_id, "mode": scope.mode},
    ).one_or_none()
    return None if row is None else Attempt(**row._mapping)


# The page (an index walk with LIMIT), then each of its recoveries' progress: one statement
# for the whole page, in the page's order.
RECOVERY_PAGE = (
    recoveries_status(
        "SELECT * FROM {s}.recoveries rc WHERE {where} "
        "ORDER BY rc.created_at DESC, rc.id DESC LIMIT :limit"
    )
    + " ORDER BY rc.created_at DESC, rc.id DESC"
)
RECOVERY_SCOPE = (
    "SELECT 1 FROM {s}.recoveries WHERE id = :id AND project_id = :project_id AND mode = :mode"
)


def recoveries_where(
    scope: Scope,
    after: Position | None = None,
    window: Window = Window(),
    *,
    endpoint_id: str | None = None,
    state: str | None = None,
) -> Where:
    """The recovery list's conditions."""
    where = _created(scoped("rc", scope), "rc", after, window)
    where.when(endpoint_id, "rc.endpoint_id = :endpoint_id", "endpoint_id")
    return where.when(state, "rc.state = :state", "state")


def list_recoveries_page(
    conn: Connection,
    settings: Settings,
    scope: Scope,
    now: datetime,
    *,
    limit: int,
    after: Position | None = None,
    window: Window = Window(),
    endpoint_id: str | None = None,
    state: str | None = None,
) -> Page[Recovery]:
    """The scope's recoveries with their progress, newest first."""
    where = recoveries_where(scope, after, window, endpoint_id=endpoint_id, state=state)
    where.params["now"] = now
    rows = _run(conn, settings, RECOVERY_PAGE, where, limit)
    return _page(rows, limit, [recovery_from_row(r) for r in rows[:limit]])


def find_recovery(
    conn: Connection, settings: Settings, scope: Scope, recovery_id: str, now: datetime
) -> Recovery | None:
    """One recovery with its progress if it is in the scope, else None."""
    found = conn.execute(
        sql(RECOVERY_SCOPE, settings.db_schema),
        {"id": recovery_id, "project_id": scope.project_id, "mode": scope.mode},
    ).first()
    return None if found is None else get_recovery(conn, settings, recovery_id, now)


def find_endpoint(
    conn: Connection, settings: Settings, scope: Scope, endpoint_id: str
) -> Endpoint | None:
    """One endpoint (deleted ones too) if it is in the scope, else None."""
    row = conn.execute(
        sql(
            f"SELECT {ENDPOINT_COLUMNS} FROM {{s}}.endpoints e WHERE e.id = :id "
            "AND e.project_id = :project_id AND e.mode = :mode",
            settings.db_schema,
        ),
        {"id": endpoint_id, "project_id": scope.project_id, "mode": scope.mode},
    ).one_or_none()
    return None if row is None else endpoint_from_row(row)
