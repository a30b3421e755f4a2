"""Reading what happened: an event with its deliveries, and every attempt made."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.errors import EventNotFound
from webhooks.models import Attempt, Delivery
from webhooks.settings import Settings

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


def get_envelope(conn: Connection, settings: Settings, event_id: str) -> dict[str, Any]:
    """Return the event's envelope as sent, or raise `EventNotFound`.

    Events stored before modes existed have no ``"mode"`` in their bytes; they are live, and
    the envelope returned says so.
    """
    row = conn.execute(
        sql("SELECT payload, mode FROM {s}.events WHERE id = :id", settings.db_schema),
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
