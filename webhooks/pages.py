"""Pages of one project's objects in one mode, newest first, for the faces customers use.

The HTTP API (and the portal) list endpoints, events, deliveries, attempts and recoveries a
page at a time. Every list here is a keyset walk: a page ends at a `Position` (the last row's
sort key), and the next page starts strictly after it, so rows inserted meanwhile (always
newer, hence before the first page) never make a later page repeat or skip an older row, and
a page costs its size however long the history is. Each walk reads an index in that order:

- endpoints: ``endpoints_project_mode_created (project_id, mode, created_at, id)``;
- events: ``events_project_created (project_id, mode, created_at, id)``;
- deliveries: ``deliveries_project_mode_created (project_id, mode, created_at, id)``;
- attempts: by id (the primary key, in insertion order), joined to their delivery for the
  project and mode; with ``event_id`` or ``delivery_id``, ``attempts_event`` or
  ``attempts_delivery`` narrow it first;
- recoveries: ``recoveries_project_created (project_id, mode, created_at, id)``.

A position is plain data; making it opaque and tamper-evident is the face's business.
Everything is scoped by project and mode in SQL: an id of another project or mode is simply
not found.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.endpoints import ENDPOINT_COLUMNS, endpoint_from_row
from webhooks.models import Attempt, DeliverySummary, Endpoint
from webhooks.recovery import Recovery, get_recovery
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


_AFTER = """(CAST(:after_id AS text) IS NULL
       OR ({t}.created_at, {t}.id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS text)))"""
_WINDOW = """(CAST(:created_after AS timestamptz) IS NULL OR {t}.created_at >= :created_after)
  AND (CAST(:created_before AS timestamptz) IS NULL OR {t}.created_at < :created_before)"""


def _params(
    scope: Scope, after: Position | None, window: Window, limit: int, **extra: Any
) -> dict[str, Any]:
    return {
        "project_id": scope.project_id,
        "mode": scope.mode,
        "after_at": after.created_at if after else None,
        "after_id": after.id if after else None,
        "created_after": window.created_after,
        "created_before": window.created_before,
        "limit": limit + 1,
        **extra,
    }


ENDPOINT_PAGE = (
    f"SELECT {ENDPOINT_COLUMNS} FROM {{s}}.endpoints e "
    "WHERE e.project_id = :project_id AND e.mode = :mode AND e.deleted_at IS NULL AND "
    + _AFTER.format(t="e")
    + " AND "
    + _WINDOW.format(t="e")
    + " ORDER BY e.created_at DESC, e.id DESC LIMIT :limit"
)


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
    rows = conn.execute(
        sql(ENDPOINT_PAGE, settings.db_schema), _params(scope, after, window, limit)
    ).all()
    return _page(rows, limit, [endpoint_from_row(r) for r in rows])


EVENT_PAGE = (
    "SELECT ev.id, ev.payload, ev.mode, ev.created_at FROM {s}.events ev "
    "WHERE ev.project_id = :project_id AND ev.mode = :mode AND "
    + _AFTER.format(t="ev")
    + " AND "
    + _WINDOW.format(t="ev")
    + " AND (CAST(:event_type AS text) IS NULL OR ev.type = :event_type)"
    " ORDER BY ev.created_at DESC, ev.id DESC LIMIT :limit"
)
EVENT = "SELECT payload, mode FROM {s}.events WHERE id = :id AND project_id = :project_id"


def _envelope(payload: str, mode: str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(payload)
    envelope.setdefault("mode", mode)
    return envelope


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
    rows = conn.execute(
        sql(EVENT_PAGE, settings.db_schema),
        _params(scope, after, window, limit, event_type=event_type),
    ).all()
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
WHERE d.project_id = :project_id AND d.mode = :mode
"""
DELIVERY_PAGE = (
    _DELIVERY_SELECT
    + " AND "
    + _AFTER.format(t="d")
    + " AND "
    + _WINDOW.format(t="d")
    + """
  AND (CAST(:endpoint_id AS text) IS NULL OR d.endpoint_id = :endpoint_id)
  AND (CAST(:event_id AS text) IS NULL OR d.event_id = :event_id)
  AND (CAST(:state AS text) IS NULL OR d.state = :state)
  AND (CAST(:event_type AS text) IS NULL OR ev.type = :event_type)
ORDER BY d.created_at DESC, d.id DESC LIMIT :limit"""
)
DELIVERY = _DELIVERY_SELECT + " AND d.id = :id"


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
    rows = conn.execute(
        sql(DELIVERY_PAGE, settings.db_schema),
        _params(
            scope,
            after,
            window,
            limit,
            state=state,
            endpoint_id=endpoint_id,
            event_id=event_id,
            event_type=event_type,
        ),
    ).all()
    return _page(rows, limit, [DeliverySummary(**r._mapping) for r in rows])


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
SELECT a.id, a.number, a.trigger, a.delivery_id, a.event_id, a.endpoint_id, d.mode,
       a.started_at, a.duration_ms, a.request_url, a.response_status, a.error_kind,
       a.error_message, a.response_body{full}
FROM {{s}}.attempts a JOIN {{s}}.deliveries d ON d.id = a.delivery_id
WHERE d.project_id = :project_id AND d.mode = :mode
"""
ATTEMPT_PAGE = (
    _ATTEMPT_SELECT.format(full="")
    + """
  AND (CAST(:after_id AS bigint) IS NULL OR a.id < CAST(:after_id AS bigint))
  AND (CAST(:created_after AS timestamptz) IS NULL OR a.started_at >= :created_after)
  AND (CAST(:created_before AS timestamptz) IS NULL OR a.started_at < :created_before)
  AND (CAST(:event_id AS text) IS NULL OR a.event_id = :event_id)
  AND (CAST(:delivery_id AS text) IS NULL OR a.delivery_id = :delivery_id)
  AND (CAST(:endpoint_id AS text) IS NULL OR a.endpoint_id = :endpoint_id)
  AND (CAST(:status AS text) IS NULL
       OR (:status = 'succeeded') = coalesce(a.error_kind IS NULL
                                          AND a.response_status BETWEEN 200 AND 299, false))
ORDER BY a.id DESC LIMIT :limit"""
)
ATTEMPT = _ATTEMPT_SELECT.format(full=", a.request_headers, a.response_headers") + " AND a.id = :id"
ATTEMPT_STATUSES = ("succeeded", "failed")


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
    rows = conn.execute(
        sql(ATTEMPT_PAGE, settings.db_schema),
        _params(
            scope,
            after,
            window,
            limit,
            event_id=event_id,
            delivery_id=delivery_id,
            endpoint_id=endpoint_id,
            status=status,
        ),
    ).all()
    return _page(rows, limit, [Attempt(**r._mapping) for r in rows], key="")


def find_attempt(
    conn: Connection, settings: Settings, scope: Scope, attempt_id: int
) -> Attempt | None:
    """One attempt in full (request and response headers too) if it is in the scope."""
    row = conn.execute(
        sql(ATTEMPT, settings.db_schema),
        {"id": attempt_id, "project_id": scope.project_id, "mode": scope.mode},
    ).one_or_none()
    return None if row is None else Attempt(**row._mapping)


RECOVERY_PAGE = (
    "SELECT rc.id, rc.created_at FROM {s}.recoveries rc "
    "WHERE rc.project_id = :project_id AND rc.mode = :mode AND "
    + _AFTER.format(t="rc")
    + " AND "
    + _WINDOW.format(t="rc")
    + " AND (CAST(:endpoint_id AS text) IS NULL OR rc.endpoint_id = :endpoint_id)"
    " AND (CAST(:state AS text) IS NULL OR rc.state = :state)"
    " ORDER BY rc.created_at DESC, rc.id DESC LIMIT :limit"
)
RECOVERY_SCOPE = (
    "SELECT 1 FROM {s}.recoveries WHERE id = :id AND project_id = :project_id AND mode = :mode"
)


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
    rows = conn.execute(
        sql(RECOVERY_PAGE, settings.db_schema),
        _params(scope, after, window, limit, endpoint_id=endpoint_id, state=state),
    ).all()
    return _page(rows, limit, [get_recovery(conn, settings, r.id, now) for r in rows[:limit]])


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
