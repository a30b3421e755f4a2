"""Reading what happened: an event with its deliveries, every attempt made, and a project's
deliveries newest first (`webhooks deliveries`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.endpoints import get_endpoint
from webhooks.errors import EventNotFound, InvalidArgument
from webhooks.models import DELIVERY_STATES, Attempt, Delivery, DeliverySummary
from webhooks.modes import validate_optional_mode
from webhooks.outbox import validate_project_id
from webhooks.settings import Settings

MAX_LISTED = 1000

EVENT_PAYLOAD = "SELECT payload, mode FROM {s}.events WHERE id = :id"
ATTEMPTS = """
SELECT a.number, a.trigger, a.delivery_id, a.endpoint_id, d.mode, a.started_at, a.duration_ms,
       a.request_url, a.response_status, a.error_kind, a.error_message, a.response_body
FROM {s}.attempts a JOIN {s}.deliveries d ON d.id = a.delivery_id
WHERE a.event_id = :event_id
  AND (CAST(:endpoint_id AS text) IS NULL OR a.endpoint_id = :endpoint_id)
ORDER BY a.endpoint_id, a.number, a.id
"""
DELIVERIES = """
SELECT id, event_id, endpoint_id, mode, state, attempt_count, next_attempt_at
FROM {s}.deliveries WHERE event_id = :event_id ORDER BY endpoint_id
"""
# Newest first. With --endpoint, `deliveries_endpoint_created (endpoint_id, created_at, id)` is
# read backwards; otherwise `deliveries_project_created (project_id, created_at, id)`: either way
# the scan stops after LIMIT matching rows. The last attempt is one index probe per row
# listed (`attempts_delivery (delivery_id, number)`).
PROJECT_DELIVERIES = """
SELECT d.id, d.event_id, ev.type AS event_type, d.endpoint_id, d.project_id, d.mode, d.state,
       d.attempt_count, last.response_status AS last_status, last.error_kind AS last_error_kind,
       last.error_message AS last_error_message, d.next_attempt_at, d.created_at, d.updated_at
FROM {s}.deliveries d
JOIN {s}.events ev ON ev.id = d.event_id
LEFT JOIN LATERAL (
    SELECT a.response_status, a.error_kind, a.error_message FROM {s}.attempts a
    WHERE a.delivery_id = d.id ORDER BY a.number DESC, a.id DESC LIMIT 1
) last ON true
WHERE d.project_id = :project_id
  AND (CAST(:endpoint_id AS text) IS NULL OR d.endpoint_id = :endpoint_id)
  AND (CAST(:state AS text) IS NULL OR d.state = :state)
  AND (CAST(:mode AS text) IS NULL OR d.mode = :mode)
  AND (CAST(:since AS timestamptz) IS NULL OR d.created_at >= :since)
ORDER BY d.created_at DESC, d.id DESC
LIMIT :limit
"""


def get_envelope(conn: Connection, settings: Settings, event_id: str) -> dict[str, Any]:
    """Return the event's envelope as sent, or raise `EventNotFound`.

    Events stored before modes existed have no ``"mode"`` in their bytes; they are live, and
    the envelope returned says so.
    """
    row = conn.execute(
        sql(EVENT_PAYLOAD, settings.db_schema),
        {"id": event_id},
    ).one_or_none()
    if row is None:
        raise EventNotFound(event_id)
    envelope: dict[str, Any] = json.loads(row.payload)
    envelope.setdefault("mode", row.mode)
    return envelope


def list_attempts(
    conn: Connection, settings: Settings, event_id: str, *, endpoint_id: str | None = None
) -> list[Attempt]:
    """Every attempt of an event (or of its delivery to one endpoint), in order."""
    get_envelope(conn, settings, event_id)
    rows = conn.execute(
        sql(ATTEMPTS, settings.db_schema), {"event_id": event_id, "endpoint_id": endpoint_id}
    )
    return [Attempt(**row._mapping) for row in rows]


def get_deliveries(conn: Connection, settings: Settings, event_id: str) -> list[Delivery]:
    """The event's deliveries, each with its attempts."""
    # Deliveries first: an attempt is committed with the state it led to, so attempts read
    # afterwards include every attempt behind the states shown (reading them first could show
    # a delivery `succeeded` with its successful attempt missing).
    rows = conn.execute(sql(DELIVERIES, settings.db_schema), {"event_id": event_id}).all()
    attempts = list_attempts(conn, settings, event_id)
    return [
        Delivery(
            id=row.id,
            event_id=row.event_id,
            endpoint_id=row.endpoint_id,
            mode=row.mode,
            state=row.state,
            attempt_count=row.attempt_count,
            next_attempt_at=row.next_attempt_at,
            attempts=tuple(a for a in attempts if a.delivery_id == row.id),
        )
        for row in rows
    ]


def list_deliveries(
    conn: Connection,
    settings: Settings,
    *,
    project_id: str,
    endpoint_id: str | None = None,
    state: str | None = None,
    mode: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[DeliverySummary]:
    """A project's deliveries, newest first, each with its last attempt's outcome.

    Args:
        endpoint_id: only this endpoint's (deleted ones too: their deliveries stay listed).
        state: only deliveries in this state (`models.DELIVERY_STATES`).
        mode: ``live`` or ``test``; None lists both.
        since: only deliveries created at or after this time.
        limit: at most this many (1 to `MAX_LISTED`).

    Raises:
        InvalidArgument: a bad state, mode, limit or project id, or an endpoint of another
            project.
        EndpointNotFound: ``endpoint_id`` names no endpoint.
    """
    validate_project_id(project_id)
    if state is not None and state not in DELIVERY_STATES:
        raise InvalidArgument(
            f"--state {state!r} is not a delivery state; use one of " + ", ".join(DELIVERY_STATES)
        )
    if not 1 <= limit <= MAX_LISTED:
        raise InvalidArgument(f"--limit must be between 1 and {MAX_LISTED}, not {limit}")
    if endpoint_id is not None:
        endpoint = get_endpoint(conn, settings, endpoint_id, include_deleted=True)
        if endpoint.project_id != project_id:
            raise InvalidArgument(
                f"endpoint {endpoint_id} belongs to project {endpoint.project_id}, not {project_id}"
            )
    rows = conn.execute(
        sql(PROJECT_DELIVERIES, settings.db_schema),
        {
            "project_id": project_id,
            "endpoint_id": endpoint_id,
            "state": state,
            "mode": validate_optional_mode(mode),
            "since": since,
            "limit": limit,
        },
    )
    return [DeliverySummary(**row._mapping) for row in rows]
