"""`webhooks stats`: deliveries by state, overall and for the endpoints failing most, and
endpoint health (enabled, disabled, breakers open), plus the due backlog and the events
committed but not yet expanded into deliveries (`expansion`).

One read-only snapshot; counting deliveries by state scans the table, so this is an operator's
command (seconds on tens of millions of rows), not something to poll every second: the
Prometheus metrics are for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from webhooks import clock
from webhooks.database import sql
from webhooks.expansion import awaiting_expansion
from webhooks.models import DELIVERY_STATES, rfc3339
from webhooks.settings import Settings

STATES = DELIVERY_STATES

BY_STATE = "SELECT state, count(*) AS n FROM {s}.deliveries GROUP BY state"
ENDPOINTS = """
SELECT count(*) FILTER (WHERE enabled AND deleted_at IS NULL) AS enabled,
       count(*) FILTER (WHERE NOT enabled AND deleted_at IS NULL) AS disabled,
       count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted,
       count(*) FILTER (WHERE breaker_open_until > :now AND deleted_at IS NULL) AS breakers_open
FROM {s}.endpoints
"""
# Due now on an enabled endpoint: what the dispatchers should be sending this moment.
BACKLOG = """
SELECT count(*) AS due, min(d.next_attempt_at) AS oldest
FROM {s}.deliveries d
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.enabled
WHERE d.state = 'pending' AND d.next_attempt_at <= :now
"""
# Deliveries whose leases keep running out with no attempt recorded: a crash between claim
# and record, repeated. One reclaim is an accident (a worker killed); several are a loop.
RECLAIMED = """
SELECT count(*) AS n, coalesce(max(reclaims), 0) AS most,
       (array_agg(id ORDER BY reclaims DESC, id))[1] AS worst
FROM {s}.deliveries WHERE reclaims > 0 AND state IN ('pending', 'delivering')
"""
# The endpoints with the most failed deliveries (then the most pending: a disabled endpoint
# holding work), with their counts by state.
TOP_ENDPOINTS = """
WITH counts AS (
    SELECT endpoint_id,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'delivering') AS delivering,
           count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           count(*) FILTER (WHERE state = 'cancelled') AS cancelled
    FROM {s}.deliveries
    GROUP BY endpoint_id
)
SELECT e.id, e.project_id, e.enabled, e.disabled_reason,
       coalesce(e.breaker_open_until > :now, false) AS breaker_open,
       c.pending, c.delivering, c.succeeded, c.failed, c.cancelled
FROM counts c JOIN {s}.endpoints e ON e.id = c.endpoint_id
WHERE c.failed > 0 OR c.pending > 0
ORDER BY c.failed DESC, c.pending DESC, e.id
LIMIT :top
"""


@dataclass(frozen=True)
class Backlog:
    """Deliveries due now on enabled endpoints, and how long the oldest has waited."""

    due: int
    oldest_age: timedelta | None  # None when nothing is due


def due_backlog(conn: Connection, settings: Settings, now: datetime) -> Backlog:
    """The backlog at ``now``: `webhooks stats` shows it, `webhooks doctor` judges its age."""
    row = conn.execute(sql(BACKLOG, settings.db_schema), {"now": now}).one()
    if row.oldest is None:
        return Backlog(due=int(row.due), oldest_age=None)
    return Backlog(due=int(row.due), oldest_age=max(now - row.oldest, timedelta(0)))


def delivery_stats(
    conn: Connection, settings: Settings, *, top: int = 10, now: datetime | None = None
) -> dict[str, Any]:
    """Return a JSON-ready snapshot of delivery and endpoint health.

    Shape (the ``--json`` output)::

        {"generated_at": "…Z",
         "deliveries": {"pending": n, "delivering": n, "succeeded": n, "failed": n,
                        "cancelled": n, "total": n},
         "endpoints": {"enabled": n, "disabled": n, "deleted": n, "breakers_open": n},
         "backlog": {"due": n, "oldest_due_age_seconds": float | null},
         "expansion": {"awaiting": n, "oldest_age_seconds": float | null},
         "reclaimed_without_attempt": {"deliveries": n, "most_reclaims": n,
                                       "delivery_id": "dlv_…" | null},
         "top_endpoints": [{"endpoint_id", "project_id", "enabled", "disabled_reason",
                            "breaker_open", "pending", "delivering", "succeeded", "failed",
                            "cancelled"}]}

    Args:
        conn: a connection to the webhooks database.
        settings: for the schema.
        top: how many endpoints to list, most failed deliveries first.
        now: the reference time for the backlog and breakers; the clock's by default.
    """
    now = now or clock.now()
    schema = settings.db_schema
    by_state = dict.fromkeys(STATES, 0)
    for row in conn.execute(sql(BY_STATE, schema)):
        by_state[row.state] = int(row.n)
    deliveries: dict[str, int] = {**by_state, "total": sum(by_state.values())}
    endpoints = conn.execute(sql(ENDPOINTS, schema), {"now": now}).one()
    backlog = due_backlog(conn, settings, now)
    reclaimed = conn.execute(sql(RECLAIMED, schema)).one()
    awaiting = awaiting_expansion(conn, settings, now)
    top_endpoints = [
        {
            "endpoint_id": row.id,
            "project_id": row.project_id,
            "enabled": row.enabled,
            "disabled_reason": row.disabled_reason,
            "breaker_open": row.breaker_open,
            **{state: int(getattr(row, state)) for state in STATES},
        }
        for row in conn.execute(sql(TOP_ENDPOINTS, schema), {"now": now, "top": top})
    ]
    return {
        "generated_at": rfc3339(now),
        "deliveries": deliveries,
        "endpoints": {
            "enabled": int(endpoints.enabled),
            "disabled": int(endpoints.disabled),
            "deleted": int(endpoints.deleted),
            "breakers_open": int(endpoints.breakers_open),
        },
        "backlog": {
            "due": backlog.due,
            "oldest_due_age_seconds": (
                round(backlog.oldest_age.total_seconds(), 3)
                if backlog.oldest_age is not None
                else None
            ),
        },
        "expansion": {
            "awaiting": awaiting.events,
            "oldest_age_seconds": awaiting.oldest_age_seconds,
        },
        "reclaimed_without_attempt": {
            "deliveries": int(reclaimed.n),
            "most_reclaims": int(reclaimed.most),
            "delivery_id": reclaimed.worst,
        },
        "top_endpoints": top_endpoints,
    }
