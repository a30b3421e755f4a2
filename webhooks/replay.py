"""Replay: send events again, now, whatever their state.

A replay is a row in the ``replays`` table, claimed and leased by the dispatcher like any
delivery and sent by the same worker code, with trigger ``replay``: the same ``webhook-id``
and body, a fresh timestamp and signature. A replay that succeeds settles its delivery as
``succeeded``; one that fails changes neither its state nor its schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from webhooks import clock
from webhooks.database import sql
from webhooks.endpoints import get_endpoint
from webhooks.errors import EventNotFound, InvalidArgument
from webhooks.models import DELIVERY_STATES
from webhooks.outbox import REPLAYS_QUEUED, notify_dispatchers
from webhooks.settings import Settings

REPLAY_STATUSES = DELIVERY_STATES
BULK_BATCH_SIZE = 500

# Deleted endpoints are left out: nothing more is sent to them.
REPLAY_EVENT = """
INSERT INTO {s}.replays (delivery_id, requested_at)
SELECT d.id, :now FROM {s}.deliveries d
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.deleted_at IS NULL
WHERE d.event_id = :event_id
  AND (CAST(:endpoint_id AS text) IS NULL OR d.endpoint_id = :endpoint_id)
"""

# Keyset pagination over (created_at, id): each batch is its own short transaction, so a bulk
# replay of a million deliveries never holds locks for long, and a progress bar can follow.
BULK_PAGE = """
SELECT d.id, d.created_at FROM {s}.deliveries d
WHERE d.endpoint_id = :endpoint_id
  AND d.created_at >= :since AND (CAST(:until AS timestamptz) IS NULL OR d.created_at < :until)
  AND (CAST(:status AS text) IS NULL OR d.state = :status)
  AND (d.created_at, d.id) > (:after_created, :after_id)
ORDER BY d.created_at, d.id
LIMIT :limit
"""
BULK_COUNT = """
SELECT count(*) FROM {s}.deliveries d
WHERE d.endpoint_id = :endpoint_id
  AND d.created_at >= :since AND (CAST(:until AS timestamptz) IS NULL OR d.created_at < :until)
  AND (CAST(:status AS text) IS NULL OR d.state = :status)
"""
QUEUE_REPLAYS = """
INSERT INTO {s}.replays (delivery_id, requested_at)
SELECT unnest(CAST(:ids AS text[])), :now
"""


@dataclass(frozen=True)
class BulkReplay:
    """Which deliveries of one endpoint a bulk replay covers."""

    endpoint_id: str
    since: datetime
    until: datetime | None = None
    status: str | None = None


def replay_event(
    conn: Connection, settings: Settings, event_id: str, *, endpoint_id: str | None = None
) -> int:
    """Queue a replay of one event to all its endpoints, or one; return how many.

    Endpoints deleted since are skipped; naming one raises `EndpointDeleted`.
    """
    exists = conn.execute(
        sql("SELECT 1 FROM {s}.events WHERE id = :id", settings.db_schema), {"id": event_id}
    ).scalar_one_or_none()
    if exists is None:
        raise EventNotFound(event_id)
    if endpoint_id is not None:
        get_endpoint(conn, settings, endpoint_id)
    queued = conn.execute(
        sql(REPLAY_EVENT, settings.db_schema),
        {"event_id": event_id, "endpoint_id": endpoint_id, "now": clock.now()},
    ).rowcount
    if endpoint_id is not None and not queued:
        raise InvalidArgument(
            f"event {event_id} was never routed to endpoint {endpoint_id} (another project, a "
            "filter that did not match, or an endpoint created later); nothing to replay"
        )
    if queued:
        notify_dispatchers(conn, settings, REPLAYS_QUEUED)
    return int(queued)


def count_bulk(conn: Connection, settings: Settings, selection: BulkReplay) -> int:
    """How many deliveries a bulk replay would queue."""
    _check(selection)
    get_endpoint(conn, settings, selection.endpoint_id)
    return int(conn.execute(sql(BULK_COUNT, settings.db_schema), _params(selection)).scalar_one())


def replay_bulk(
    engine: Engine,
    settings: Settings,
    selection: BulkReplay,
    *,
    on_progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Queue a replay of every selected delivery, batch by batch; return how many."""
    total = 0
    for ids in _pages(engine, settings, selection):
        with engine.begin() as conn:
            conn.execute(sql(QUEUE_REPLAYS, settings.db_schema), {"ids": ids, "now": clock.now()})
            notify_dispatchers(conn, settings, REPLAYS_QUEUED)
        total += len(ids)
        on_progress(len(ids))
    return total


def _pages(engine: Engine, settings: Settings, selection: BulkReplay) -> Iterator[list[str]]:
    params = {
        **_params(selection),
        "after_created": datetime.min.replace(tzinfo=selection.since.tzinfo),
        "after_id": "",
        "limit": BULK_BATCH_SIZE,
    }
    while True:
        with engine.connect() as conn:
            rows = conn.execute(sql(BULK_PAGE, settings.db_schema), params).all()
        if not rows:
            return
        yield [r.id for r in rows]
        params["after_created"], params["after_id"] = rows[-1].created_at, rows[-1].id


def _check(selection: BulkReplay) -> None:
    if selection.status is not None and selection.status not in REPLAY_STATUSES:
        raise InvalidArgument(
            f"--status {selection.status!r} is not a delivery state; use one of "
            + ", ".join(REPLAY_STATUSES)
        )
    if selection.until is not None and selection.until <= selection.since:
        raise InvalidArgument("--until must be later than --since")


def _params(selection: BulkReplay) -> dict[str, object]:
    return {
        "endpoint_id": selection.endpoint_id,
        "since": selection.since,
        "until": selection.until,
        "status": selection.status,
    }
