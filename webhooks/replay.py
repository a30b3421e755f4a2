"""Replay: send events again, now, whatever their state.

A replay is a row in the ``replays`` table, claimed and leased by the dispatcher through the
same admission as scheduled work (`claiming.claim_due`) and sent by the same worker code, with
trigger ``replay``: the same ``webhook-id`` and body, a fresh timestamp and signature. A
replay that succeeds settles its delivery as ``succeeded``; one that fails changes neither
its state nor its schedule. A delivery has at most one replay pending or in flight (the
unique index ``replays_live``): asking again while it is queued queues nothing more.

The bulk form is a recovery of one endpoint (`webhooks.recovery`), carried out by the
dispatchers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from webhooks import clock
from webhooks.database import sql
from webhooks.endpoints import get_endpoint
from webhooks.errors import EventNotFound, InvalidArgument
from webhooks.expansion import expand_events
from webhooks.models import DELIVERY_STATES
from webhooks.modes import validate_mode
from webhooks.outbox import REPLAYS_QUEUED, notify_dispatchers
from webhooks.recovery import Recovery, RecoverySelection, count_selection, create_recovery
from webhooks.settings import Settings

# `queued`: replays this call added; `routed`: deliveries the event has (to that endpoint).
# Deleted endpoints are left out: nothing more is sent to them.
EVENT_EXISTS = "SELECT 1 FROM {s}.events WHERE id = :id"
REPLAY_EVENT = """
WITH routed AS (
    SELECT d.id FROM {s}.deliveries d
    JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.deleted_at IS NULL
    WHERE d.event_id = :event_id
      AND (CAST(:endpoint_id AS text) IS NULL OR d.endpoint_id = :endpoint_id)
), queued AS (
    INSERT INTO {s}.replays (delivery_id, requested_at, due_at)
    SELECT id, :now, :now FROM routed
    ON CONFLICT (delivery_id) WHERE state IN ('pending', 'delivering') DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM queued) AS queued, (SELECT count(*) FROM routed) AS routed
"""


@dataclass(frozen=True)
class ReplayResult:
    """How many deliveries a replay queued, and how many were already queued."""

    queued: int
    already_queued: int = 0


@dataclass(frozen=True)
class BulkReplay:
    """Which deliveries of one endpoint a bulk replay covers (by their event's time)."""

    endpoint_id: str
    since: datetime
    until: datetime | None = None
    status: str | None = None


def replay_event(
    conn: Connection, settings: Settings, event_id: str, *, endpoint_id: str | None = None
) -> ReplayResult:
    """Queue a replay of one event to all its endpoints, or one.

    Endpoints deleted since are skipped; naming one raises `EndpointDeleted`. An event not yet
    expanded is expanded first (`expansion.expand_events`).
    """
    exists = conn.execute(
        sql(EVENT_EXISTS, settings.db_schema), {"id": event_id}
    ).scalar_one_or_none()
    if exists is None:
        raise EventNotFound(event_id)
    if endpoint_id is not None:
        get_endpoint(conn, settings, endpoint_id)
    # An event not yet expanded has no deliveries to replay: give it them now, as a
    # dispatcher would, and the replay goes where the event goes.
    expand_events(conn, settings, [event_id])
    row = conn.execute(
        sql(REPLAY_EVENT, settings.db_schema),
        {"event_id": event_id, "endpoint_id": endpoint_id, "now": clock.now()},
    ).one()
    if endpoint_id is not None and not row.routed:
        raise InvalidArgument(
            f"event {event_id} was never routed to endpoint {endpoint_id} (another project, a "
            "filter that did not match, or an endpoint created later); `webhooks recover "
            "--endpoint EP --include-unrouted` sends it"
        )
    if row.queued:
        notify_dispatchers(conn, settings, REPLAYS_QUEUED)
    return ReplayResult(int(row.queued), int(row.routed - row.queued))


def bulk_selection(conn: Connection, settings: Settings, bulk: BulkReplay) -> RecoverySelection:
    """The recovery a bulk replay is: that endpoint's project and mode, events until now."""
    if bulk.status is not None and bulk.status not in DELIVERY_STATES:
        raise InvalidArgument(
            f"--status {bulk.status!r} is not a delivery state; use one of "
            + ", ".join(DELIVERY_STATES)
        )
    endpoint = get_endpoint(conn, settings, bulk.endpoint_id)
    return RecoverySelection(
        project_id=endpoint.project_id,
        mode=validate_mode(endpoint.mode),
        since=bulk.since,
        until=bulk.until or clock.now(),
        endpoint_id=endpoint.id,
        delivery_state=bulk.status,
    )


def count_bulk(conn: Connection, settings: Settings, bulk: BulkReplay) -> int:
    """How many deliveries a bulk replay would queue."""
    return count_selection(conn, settings, bulk_selection(conn, settings, bulk))


def replay_bulk(conn: Connection, settings: Settings, bulk: BulkReplay) -> Recovery:
    """Create the recovery of a bulk replay; the dispatchers queue and send it."""
    return create_recovery(conn, settings, bulk_selection(conn, settings, bulk), clock.now())
