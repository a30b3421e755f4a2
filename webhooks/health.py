"""Endpoint health: what an attempt's outcome says about its endpoint.

- Attempts that get no HTTP response at all count towards the endpoint's circuit breaker
  (see `webhooks.admission`); any response closes it.
- ``410 Gone`` means the receiver is gone for good: the endpoint is disabled at once.
- A delivery that exhausts its retry window emits ``delivery.exhausted``; an endpoint whose
  deliveries have kept exhausting, with no success in between, for `WEBHOOKS_DISABLE_AFTER`
  (default 5 days) is disabled.
- Disabling emits ``endpoint.disabled``. Both operational events go through `publish()`
  itself, under the reserved project `OPERATIONS_PROJECT`, so operators subscribe to them
  with an ordinary endpoint. Nothing is emitted about deliveries of those events themselves,
  so a broken operations endpoint cannot feed itself.

A disabled endpoint's pending deliveries are held, not dropped, and flow again on enable.
Runs inside the transaction that records the attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.endpoints import disable_endpoint
from webhooks.models import rfc3339
from webhooks.outbox import publish_event
from webhooks.settings import Settings

OPERATIONS_PROJECT = "_webhooks"
GONE = 410

# Written only when something changes, so the hot path of a healthy endpoint takes no
# lock on its endpoint row.
CLEAR_FAILING = """
UPDATE {s}.endpoints SET failing_since = NULL
WHERE id = :endpoint_id AND failing_since IS NOT NULL
"""
CLOSE_BREAKER = """
UPDATE {s}.endpoints SET consecutive_failures = 0, breaker_open_until = NULL
WHERE id = :endpoint_id AND (consecutive_failures <> 0 OR breaker_open_until IS NOT NULL)
"""
COUNT_UNREACHABLE = """
UPDATE {s}.endpoints SET consecutive_failures = consecutive_failures + 1,
    breaker_open_until = CASE WHEN consecutive_failures + 1 >= :threshold
                              THEN :now + :cooldown ELSE breaker_open_until END
WHERE id = :endpoint_id
"""
# No HTTP response at all: the kind of failure that ties up a worker for the whole deadline.
UNREACHABLE = frozenset({"timeout", "connect", "dns", "tls"})
MARK_FAILING = """
UPDATE {s}.endpoints SET failing_since = coalesce(failing_since, :now)
WHERE id = :endpoint_id AND enabled
RETURNING failing_since
"""


def after_attempt(
    conn: Connection,
    settings: Settings,
    *,
    endpoint_id: str,
    project_id: str,
    delivery: dict[str, Any],
    status: int | None,
    error_kind: str | None,
    succeeded: bool,
    exhausted: bool,
    now: datetime,
) -> None:
    """Update the endpoint's health after an attempt and emit operational events.

    Args:
        conn: the transaction recording the attempt.
        settings: the settings (disable window, schema).
        endpoint_id: the endpoint attempted.
        project_id: the event's project (operational events are not reported on).
        delivery: ids and counts describing the delivery, for the event's data.
        status: the response status, if any.
        error_kind: the attempt's error kind, if it failed.
        succeeded: whether the attempt succeeded.
        exhausted: whether this attempt just moved the delivery to ``failed``.
        now: the time of recording.
    """
    params = {"endpoint_id": endpoint_id, "now": now}
    update_breaker(conn, settings, endpoint_id, status=status, error_kind=error_kind, now=now)
    if succeeded:
        conn.execute(sql(CLEAR_FAILING, settings.db_schema), params)
        return
    if status == GONE:
        if exhausted and project_id != OPERATIONS_PROJECT:
            emit(conn, settings, "delivery.exhausted", delivery)
        disable(
            conn,
            settings,
            endpoint_id,
            f"the endpoint answered 410 Gone at {rfc3339(now)}",
            project_id != OPERATIONS_PROJECT,
        )
    elif exhausted:
        after_exhausted(
            conn,
            settings,
            endpoint_id=endpoint_id,
            project_id=project_id,
            delivery=delivery,
            now=now,
        )


def after_exhausted(
    conn: Connection,
    settings: Settings,
    *,
    endpoint_id: str,
    project_id: str,
    delivery: dict[str, Any],
    now: datetime,
) -> None:
    """A delivery just failed for good: say so, and disable its endpoint if it is time.

    Called after its last attempt, or when a deferral (breaker, rate limit) would have
    taken its next attempt past the retry window.
    """
    reporting = project_id != OPERATIONS_PROJECT
    if reporting:
        emit(conn, settings, "delivery.exhausted", delivery)
    params = {"endpoint_id": endpoint_id, "now": now}
    since = conn.execute(sql(MARK_FAILING, settings.db_schema), params).scalar_one_or_none()
    if since is not None and now - since >= settings.disable_after:
        disable(
            conn,
            settings,
            endpoint_id,
            f"every delivery has been failing since {rfc3339(since)}",
            reporting,
        )


def update_breaker(
    conn: Connection,
    settings: Settings,
    endpoint_id: str,
    *,
    status: int | None,
    error_kind: str | None,
    now: datetime,
) -> None:
    """Count attempts that got no response; any response closes the breaker."""
    params = {"endpoint_id": endpoint_id, "now": now}
    if status is not None:
        conn.execute(sql(CLOSE_BREAKER, settings.db_schema), params)
    elif error_kind in UNREACHABLE:
        conn.execute(
            sql(COUNT_UNREACHABLE, settings.db_schema),
            {
                **params,
                "threshold": settings.breaker_threshold,
                "cooldown": settings.breaker_cooldown,
            },
        )


def disable(
    conn: Connection, settings: Settings, endpoint_id: str, reason: str, reporting: bool
) -> None:
    """Disable an endpoint that is still enabled (and not deleted), and say so."""
    enabled = conn.execute(
        sql(
            "SELECT enabled FROM {s}.endpoints WHERE id = :id AND deleted_at IS NULL FOR UPDATE",
            settings.db_schema,
        ),
        {"id": endpoint_id},
    ).scalar_one_or_none()
    if not enabled:
        return
    endpoint = disable_endpoint(conn, settings, endpoint_id, reason=reason)
    if reporting:
        emit(
            conn,
            settings,
            "endpoint.disabled",
            {
                "endpoint_id": endpoint.id,
                "project_id": endpoint.project_id,
                "url": endpoint.url,
                "reason": reason,
            },
        )


def emit(conn: Connection, settings: Settings, event_type: str, data: dict[str, Any]) -> None:
    """Publish an operational event in the current transaction."""
    publish_event(conn, settings, project_id=OPERATIONS_PROJECT, type=event_type, data=data)
