"""Endpoint health: what an attempt's outcome says about its endpoint.

- Health is `healthy`, `failing` (its last `FAILING_AFTER` attempts in a row failed, or a
  delivery of it exhausted its window; with the time it started and a short reason from the
  latest attempt, `failure_reason`) or `disabled`. The first success makes it healthy again.
- Attempts that get no HTTP response at all count towards the endpoint's circuit breaker
  (see `webhooks.admission`); any response closes it.
- ``410 Gone`` means the receiver is gone for good: the endpoint is disabled at once.
- An endpoint failing for `WEBHOOKS_DISABLE_AFTER` (default 5 days) is disabled at its next
  exhausted delivery.
- Operational events, published through `publish()` itself under the reserved project
  `OPERATIONS_PROJECT` in the endpoint's mode, so operators subscribe to them with an ordinary
  endpoint: ``endpoint.failing`` when health turns failing (with the reason), and again at
  the first exhausted delivery of that failing period (with the date it will be disabled if
  nothing succeeds); ``endpoint.recovered`` at the first success after failing;
  ``endpoint.disabled``; ``delivery.exhausted``. Nothing is emitted about deliveries of those
  events themselves, so a broken operations endpoint cannot feed itself.

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
# Failed attempts in a row after which an endpoint is `failing`.
FAILING_AFTER = 5

# Written only when something changes, so the hot path of a healthy endpoint takes no
# lock on its endpoint row. Returns the failing period that just ended, if one did.
MARK_HEALTHY = """
WITH before AS (
    SELECT id, failing_since FROM {s}.endpoints WHERE id = :endpoint_id FOR UPDATE
)
UPDATE {s}.endpoints e
SET failing_since = NULL, failing_reason = NULL, failures_in_row = 0,
    exhaustion_announced = false
FROM before
WHERE e.id = before.id
  AND (e.failing_since IS NOT NULL OR e.failures_in_row <> 0 OR e.failing_reason IS NOT NULL)
RETURNING before.failing_since AS ended, e.project_id, e.url
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
# One more failure in a row; `turned` says whether this one made the endpoint failing.
COUNT_FAILURE = """
WITH before AS (
    SELECT id, failing_since FROM {s}.endpoints WHERE id = :endpoint_id FOR UPDATE
)
UPDATE {s}.endpoints e
SET failures_in_row = e.failures_in_row + 1, failing_reason = :reason,
    failing_since = CASE WHEN e.failures_in_row + 1 >= :failing_after
                         THEN coalesce(e.failing_since, :now) ELSE e.failing_since END
FROM before
WHERE e.id = before.id AND e.enabled
RETURNING e.failing_since, before.failing_since IS NULL AND e.failing_since IS NOT NULL AS turned,
          e.project_id, e.url
"""
# An exhausted delivery makes its endpoint failing whatever the count; the first one of a
# failing period is announced with the date the endpoint will be disabled.
MARK_EXHAUSTED = """
WITH before AS (
    SELECT id, exhaustion_announced FROM {s}.endpoints WHERE id = :endpoint_id FOR UPDATE
)
UPDATE {s}.endpoints e
SET failing_since = coalesce(e.failing_since, :now), exhaustion_announced = true
FROM before
WHERE e.id = before.id AND e.enabled
RETURNING e.failing_since, NOT before.exhaustion_announced AS first, e.failing_reason,
          e.project_id, e.url
"""


def after_attempt(
    conn: Connection,
    settings: Settings,
    *,
    endpoint_id: str,
    project_id: str,
    mode: str,
    delivery: dict[str, Any],
    status: int | None,
    error_kind: str | None,
    error_message: str | None,
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
        mode: the delivery's mode: operational events about it are published in it.
        delivery: ids and counts describing the delivery, for the event's data.
        status: the response status, if any.
        error_kind: the attempt's error kind, if it failed.
        error_message: the attempt's error message, summarised into the failing reason.
        succeeded: whether the attempt succeeded.
        exhausted: whether this attempt just moved the delivery to ``failed``.
        now: the time of recording.
    """
    reporting = project_id != OPERATIONS_PROJECT
    params = {"endpoint_id": endpoint_id, "now": now}
    update_breaker(conn, settings, endpoint_id, status=status, error_kind=error_kind, now=now)
    if succeeded:
        healed = conn.execute(sql(MARK_HEALTHY, settings.db_schema), params).one_or_none()
        if healed is not None and healed.ended is not None and reporting:
            emit(
                conn,
                settings,
                "endpoint.recovered",
                {
                    **_about(endpoint_id, healed),
                    "failing_since": rfc3339(healed.ended),
                    "recovered_at": rfc3339(now),
                },
                mode,
            )
        return
    reason = failure_reason(status, error_kind, error_message)
    counted = conn.execute(
        sql(COUNT_FAILURE, settings.db_schema),
        {**params, "reason": reason, "failing_after": FAILING_AFTER},
    ).one_or_none()
    if counted is not None and counted.turned and reporting:
        emit(
            conn,
            settings,
            "endpoint.failing",
            {
                **_about(endpoint_id, counted),
                "reason": reason,
                "failing_since": rfc3339(counted.failing_since),
                "disable_at": None,
            },
            mode,
        )
    if status == GONE:
        if exhausted and reporting:
            emit(conn, settings, "delivery.exhausted", delivery, mode)
        disable(
            conn,
            settings,
            endpoint_id,
            f"the endpoint answered 410 Gone at {rfc3339(now)}",
            reporting,
        )
    elif exhausted:
        after_exhausted(
            conn,
            settings,
            endpoint_id=endpoint_id,
            project_id=project_id,
            mode=mode,
            delivery=delivery,
            now=now,
        )


def after_exhausted(
    conn: Connection,
    settings: Settings,
    *,
    endpoint_id: str,
    project_id: str,
    mode: str,
    delivery: dict[str, Any],
    now: datetime,
) -> None:
    """A delivery just failed for good: say so, and disable its endpoint if it is time.

    Called after its last attempt, or when a deferral (breaker, rate limit) would have
    taken its next attempt past the retry window.
    """
    reporting = project_id != OPERATIONS_PROJECT
    if reporting:
        emit(conn, settings, "delivery.exhausted", delivery, mode)
    params = {"endpoint_id": endpoint_id, "now": now}
    marked = conn.execute(sql(MARK_EXHAUSTED, settings.db_schema), params).one_or_none()
    if marked is None:
        return  # disabled already
    since = marked.failing_since
    if now - since >= settings.disable_after:
        disable(
            conn,
            settings,
            endpoint_id,
            f"every delivery has been failing since {rfc3339(since)}",
            reporting,
        )
    elif marked.first and reporting:
        emit(
            conn,
            settings,
            "endpoint.failing",
            {
                **_about(endpoint_id, marked),
                "reason": marked.failing_reason or "deliveries exhausted their retries",
                "failing_since": rfc3339(since),
                "disable_at": rfc3339(since + settings.disable_after),
            },
            mode,
        )


def failure_reason(status: int | None, error_kind: str | None, error_message: str | None) -> str:
    """A short reason for a failed attempt, fit to show a customer (no internal address).

    ``HTTP 401``, ``timeout``, ``DNS: no such host``, ``TLS: certificate expired``, …
    """
    message = (error_message or "").lower()
    if error_kind == "timeout":
        return "timeout"
    if error_kind == "redirect":
        return f"redirect (HTTP {status})" if status else "redirect"
    if error_kind == "dns":
        no_host = ("not known", "no address", "nodename", "no such host", "nxdomain")
        return "DNS: no such host" if any(m in message for m in no_host) else "DNS: lookup failed"
    if error_kind == "tls":
        for needle, said in (
            ("expired", "certificate expired"),
            ("self-signed", "self-signed certificate"),
            ("self signed", "self-signed certificate"),
            ("hostname", "certificate does not match the host"),
            ("ip address mismatch", "certificate does not match the host"),
            ("unable to get local issuer", "certificate not trusted"),
            ("certificate verify failed", "certificate not trusted"),
        ):
            if needle in message:
                return f"TLS: {said}"
        return "TLS: handshake failed"
    if error_kind == "connect":
        if "refused" in message:
            return "connection refused"
        if "reset" in message:
            return "connection reset"
        if "closed" in message:
            return "connection closed by the receiver"
        return "connection failed"
    if error_kind == "blocked":
        return "blocked: not a publicly routable address"
    if status is not None:
        return f"HTTP {status}"
    return "error"


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


LOCK_ENABLED = "SELECT enabled FROM {s}.endpoints WHERE id = :id AND deleted_at IS NULL FOR UPDATE"


def disable(
    conn: Connection, settings: Settings, endpoint_id: str, reason: str, reporting: bool
) -> None:
    """Disable an endpoint that is still enabled (and not deleted), and say so."""
    enabled = conn.execute(
        sql(LOCK_ENABLED, settings.db_schema), {"id": endpoint_id}
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
            endpoint.mode,
        )


def emit(
    conn: Connection, settings: Settings, event_type: str, data: dict[str, Any], mode: str
) -> None:
    """Publish an operational event in the current transaction, in the endpoint's mode."""
    publish_event(
        conn, settings, project_id=OPERATIONS_PROJECT, type=event_type, data=data, mode=mode
    )


def _about(endpoint_id: str, row: Any) -> dict[str, Any]:
    return {"endpoint_id": endpoint_id, "project_id": row.project_id, "url": row.url}
