"""Claims and leases: how a due delivery becomes exactly one in-flight attempt.

Postgres is the only source of truth for what is due. The dispatcher *claims* due rows
(``FOR UPDATE SKIP LOCKED``, so several dispatchers never take the same row), stamping each
with a fresh claim token and a lease. The Celery message only carries ids and the token: if it
is lost (broker flushed, worker killed) the lease runs out and the row is claimed again. A
worker renews the lease when it starts and records the result only under its token, so a stale
message can never overwrite a newer claim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.admission import Candidate, IsolationPolicy, RateLimit, admit
from webhooks.database import sql
from webhooks.delivery import DeliveryOutcome
from webhooks.endpoints import active_secrets
from webhooks.health import after_attempt
from webhooks.schedule import RetryPolicy, decide_retry, parse_retry_after
from webhooks.settings import Settings

# Rows whose worker vanished (or whose message the broker lost) become due again, keeping
# the time they were first due: they go ahead of work that fell due since, not behind it.
REAP_DELIVERIES = """
UPDATE {s}.deliveries
SET state = 'pending', next_attempt_at = coalesce(next_attempt_at, :now), claim_token = NULL,
    lease_expires_at = NULL, updated_at = :now
WHERE state = 'delivering' AND lease_expires_at < :now
"""
REAP_REPLAYS = """
UPDATE {s}.replays SET state = 'pending', claim_token = NULL, lease_expires_at = NULL
WHERE state = 'delivering' AND lease_expires_at < :now
"""

# Due rows, oldest first, locked for this transaction (SKIP LOCKED: another dispatcher gets
# the next ones). OF d locks only the delivery rows, not the endpoint rows joined to skip
# disabled endpoints and to read their breaker state. `admission.admit` then decides.
DUE_CANDIDATES = """
SELECT d.id, d.endpoint_id, e.consecutive_failures, e.breaker_open_until
FROM {s}.deliveries d
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.enabled
WHERE d.state = 'pending' AND d.next_attempt_at <= :now
  AND d.endpoint_id NOT IN (SELECT f.endpoint_id FROM {s}.deliveries f
                            WHERE f.state = 'delivering'
                            GROUP BY f.endpoint_id HAVING count(*) >= :concurrency)
ORDER BY d.next_attempt_at
LIMIT :limit
FOR UPDATE OF d SKIP LOCKED
"""
IN_FLIGHT = """
SELECT endpoint_id, count(*) AS n FROM {s}.deliveries
WHERE state = 'delivering' AND endpoint_id = ANY (CAST(:endpoint_ids AS text[]))
GROUP BY endpoint_id
"""
CLAIM_DELIVERIES = """
UPDATE {s}.deliveries
SET state = 'delivering', claim_token = gen_random_uuid(), lease_expires_at = :lease_until,
    updated_at = :now
WHERE id = ANY (CAST(:ids AS text[]))
RETURNING id, event_id, endpoint_id, attempt_count, claim_token
"""
# Locked in id order so that two dispatchers never wait on each other in a cycle.
RATE_LIMITS = """
SELECT id, rate_limit, next_send_at FROM {s}.endpoints
WHERE id = ANY (CAST(:endpoint_ids AS text[])) AND rate_limit IS NOT NULL
ORDER BY id
FOR UPDATE
"""
ADVANCE_SEND_SLOTS = """
UPDATE {s}.endpoints e SET next_send_at = v.at
FROM unnest(CAST(:ids AS text[]), CAST(:ats AS timestamptz[])) AS v (id, at)
WHERE e.id = v.id
"""
DEFER_DELIVERIES = """
UPDATE {s}.deliveries d SET next_attempt_at = v.at, updated_at = :now
FROM unnest(CAST(:ids AS text[]), CAST(:ats AS timestamptz[])) AS v (id, at)
WHERE d.id = v.id
"""
CLAIM_REPLAYS = """
WITH due AS MATERIALIZED (
    SELECT r.id FROM {s}.replays r
    WHERE r.state = 'pending'
    ORDER BY r.requested_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.replays r
SET state = 'delivering', claim_token = gen_random_uuid(), lease_expires_at = :lease_until
FROM due, {s}.deliveries d
WHERE r.id = due.id AND d.id = r.delivery_id
RETURNING d.id, d.event_id, d.endpoint_id, d.attempt_count, r.claim_token
"""
RELEASE_DELIVERY = """
UPDATE {s}.deliveries
SET state = 'pending', next_attempt_at = :now, claim_token = NULL, lease_expires_at = NULL
WHERE claim_token = CAST(:token AS uuid) AND state = 'delivering'
"""
RELEASE_REPLAY = """
UPDATE {s}.replays SET state = 'pending', claim_token = NULL, lease_expires_at = NULL
WHERE claim_token = CAST(:token AS uuid) AND state = 'delivering'
"""
# Only future rows: rows already due but not claimable (their endpoint is at its cap) are
# the dispatcher's capacity re-check's business, not a reason to spin.
NEXT_DUE = """
SELECT min(next_attempt_at) FROM {s}.deliveries
WHERE state = 'pending' AND next_attempt_at > :now
"""

# The worker's first step: prove the claim is still ours and push the lease out to cover the
# whole attempt. No row back means a newer claim exists (or the work is done): do nothing.
BEGIN_SCHEDULED = """
UPDATE {s}.deliveries d SET lease_expires_at = :lease_until
FROM {s}.events ev, {s}.endpoints e
WHERE d.id = :delivery_id AND d.claim_token = CAST(:token AS uuid) AND d.state = 'delivering'
  AND ev.id = d.event_id AND e.id = d.endpoint_id
RETURNING ev.payload, e.url, e.secrets, ev.project_id
"""
BEGIN_REPLAY = """
UPDATE {s}.replays r SET lease_expires_at = :lease_until
FROM {s}.deliveries d, {s}.events ev, {s}.endpoints e
WHERE r.claim_token = CAST(:token AS uuid) AND r.state = 'delivering'
  AND d.id = r.delivery_id AND d.id = :delivery_id
  AND ev.id = d.event_id AND e.id = d.endpoint_id
RETURNING ev.payload, e.url, e.secrets, ev.project_id
"""

LOCK_DELIVERY = """
SELECT attempt_count, failed_attempts, first_attempt_at, state,
       claim_token = CAST(:token AS uuid) AS owns_claim
FROM {s}.deliveries WHERE id = :delivery_id FOR UPDATE
"""
UPDATE_DELIVERY = """
UPDATE {s}.deliveries
SET attempt_count = :attempt_count, failed_attempts = :failed_attempts,
    first_attempt_at = :first_attempt_at, state = :state, next_attempt_at = :next_attempt_at,
    claim_token = :claim_token, lease_expires_at = :lease_expires_at, updated_at = :now
WHERE id = :delivery_id
"""
FINISH_REPLAY = """
UPDATE {s}.replays SET state = 'done', claim_token = NULL, lease_expires_at = NULL
WHERE claim_token = CAST(:token AS uuid)
"""
INSERT_ATTEMPT = """
INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, number, trigger, started_at,
    duration_ms, request_url, request_headers, response_status, response_headers,
    response_body, error_kind, error_message)
VALUES (:delivery_id, :event_id, :endpoint_id, :number, :trigger, :started_at, :duration_ms,
    :request_url, CAST(:request_headers AS jsonb), :response_status,
    CAST(:response_headers AS jsonb), :response_body, :error_kind, :error_message)
"""


@dataclass(frozen=True)
class Claim:
    """A delivery handed to one worker: what the Celery message carries (ids only)."""

    delivery_id: str
    event_id: str
    endpoint_id: str
    attempt: int
    claim_token: str
    trigger: str


@dataclass(frozen=True)
class AttemptJob:
    """What a worker needs to make the attempt, read under a still-valid claim."""

    claim: Claim
    project_id: str
    payload: bytes
    url: str
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class RecordedAttempt:
    """The attempt as stored, and where it left the delivery."""

    number: int
    state: str
    next_attempt_at: datetime | None


def reap_expired_leases(conn: Connection, settings: Settings, now: datetime) -> int:
    """Make deliveries and replays whose lease ran out due again; return how many."""
    reaped = conn.execute(sql(REAP_DELIVERIES, settings.db_schema), {"now": now}).rowcount
    reaped += conn.execute(sql(REAP_REPLAYS, settings.db_schema), {"now": now}).rowcount
    return int(reaped)


@dataclass(frozen=True)
class ClaimBatch:
    """What one claim round took, and how many due rows wait only for a free slot."""

    claims: list[Claim]
    waiting: int = 0


def claim_due(conn: Connection, settings: Settings, now: datetime, limit: int) -> ClaimBatch:
    """Claim up to ``limit`` due replays and deliveries (replays first: an operator waits)."""
    params = {
        "now": now,
        "limit": limit,
        "lease_until": now + settings.lease,
        "concurrency": settings.endpoint_concurrency,
    }
    claims = [
        _claim(row, "replay")
        for row in conn.execute(sql(CLAIM_REPLAYS, settings.db_schema), params)
    ]
    if len(claims) >= limit:
        return ClaimBatch(claims)
    params["limit"] = limit - len(claims)
    batch = _claim_deliveries(conn, settings, params)
    return ClaimBatch(claims + batch.claims, batch.waiting)


def _claim_deliveries(conn: Connection, settings: Settings, params: dict[str, Any]) -> ClaimBatch:
    schema = settings.db_schema
    candidates = [
        Candidate(row.id, row.endpoint_id, row.consecutive_failures, row.breaker_open_until)
        for row in conn.execute(sql(DUE_CANDIDATES, schema), params)
    ]
    if not candidates:
        return ClaimBatch([])
    endpoint_ids = sorted({c.endpoint_id for c in candidates})
    in_flight = {
        row.endpoint_id: row.n
        for row in conn.execute(sql(IN_FLIGHT, schema), {"endpoint_ids": endpoint_ids})
    }
    rates = {
        row.id: RateLimit(row.rate_limit, row.next_send_at)
        for row in conn.execute(sql(RATE_LIMITS, schema), {"endpoint_ids": endpoint_ids})
    }
    admission = admit(
        candidates, in_flight, IsolationPolicy.from_settings(settings), params["now"], rates
    )
    if admission.next_send_at:
        conn.execute(
            sql(ADVANCE_SEND_SLOTS, schema),
            {"ids": list(admission.next_send_at), "ats": list(admission.next_send_at.values())},
        )
    if admission.defer:
        conn.execute(
            sql(DEFER_DELIVERIES, schema),
            {
                "ids": list(admission.defer),
                "ats": list(admission.defer.values()),
                "now": params["now"],
            },
        )
    claims: list[Claim] = []
    if admission.claim:
        rows = conn.execute(sql(CLAIM_DELIVERIES, schema), {**params, "ids": list(admission.claim)})
        claims = [_claim(row, "scheduled") for row in rows]
    return ClaimBatch(claims, admission.waiting)


def release_claims(
    conn: Connection, settings: Settings, claims: list[Claim], now: datetime
) -> None:
    """Give back claims whose message could not be sent, so they need not wait for the lease."""
    for claim in claims:
        statement = RELEASE_REPLAY if claim.trigger == "replay" else RELEASE_DELIVERY
        conn.execute(sql(statement, settings.db_schema), {"token": claim.claim_token, "now": now})


def next_due_at(conn: Connection, settings: Settings, now: datetime) -> datetime | None:
    """When the next pending delivery falls due after ``now`` (None: nothing scheduled)."""
    value: datetime | None = conn.execute(
        sql(NEXT_DUE, settings.db_schema), {"now": now}
    ).scalar_one()
    return value


def begin_attempt(
    conn: Connection, settings: Settings, claim: Claim, now: datetime
) -> AttemptJob | None:
    """Renew the lease of a claim and read what to send, or None if the claim is stale."""
    statement = BEGIN_REPLAY if claim.trigger == "replay" else BEGIN_SCHEDULED
    row = conn.execute(
        sql(statement, settings.db_schema),
        {
            "token": claim.claim_token,
            "delivery_id": claim.delivery_id,
            "lease_until": now + settings.lease,
        },
    ).one_or_none()
    if row is None:
        return None
    return AttemptJob(
        claim=claim,
        project_id=row.project_id,
        payload=row.payload.encode("utf-8"),
        url=row.url,
        secrets=tuple(active_secrets(row.secrets, now, settings.secret_keys)),
    )


def record_attempt(
    conn: Connection,
    settings: Settings,
    job: AttemptJob,
    *,
    outcome: DeliveryOutcome,
    started_at: datetime,
    request_headers: dict[str, str],
    now: datetime,
) -> RecordedAttempt:
    """Store the attempt and move the delivery, in the caller's (one) transaction.

    Every attempt is stored, even one made under a claim that has since been superseded: the
    request went out. Only the owner of the current claim moves a scheduled delivery; a
    replay moves it only when it succeeds, and never opens a new retry window.
    """
    claim = job.claim
    params: dict[str, Any] = {"delivery_id": claim.delivery_id, "token": claim.claim_token}
    current = conn.execute(sql(LOCK_DELIVERY, settings.db_schema), params).one()
    number = current.attempt_count + 1
    update: dict[str, Any] = {
        "delivery_id": claim.delivery_id,
        "attempt_count": number,
        "failed_attempts": current.failed_attempts,
        "first_attempt_at": current.first_attempt_at,
        "state": current.state,
        "next_attempt_at": None,
        "claim_token": claim.claim_token if current.owns_claim else None,
        "lease_expires_at": None,
        "now": now,
    }
    keep_schedule = True
    if outcome.is_success:
        # A 2xx settles the delivery whoever sent it: a replay, the current claim, or a
        # superseded one whose lease ran out (clearing the token stops the newer claim
        # before it sends, if it has not started yet).
        update.update(state="succeeded", claim_token=None)
        keep_schedule = False
    elif claim.trigger == "scheduled" and current.owns_claim:
        keep_schedule = False
        first = current.first_attempt_at or started_at
        decision = decide_retry(
            RetryPolicy.from_settings(settings),
            failures=current.failed_attempts + 1,
            first_attempt_at=first,
            now=now,
            retry_after=parse_retry_after(outcome.status, outcome.retry_after, now=now),
        )
        update.update(
            failed_attempts=current.failed_attempts + 1,
            first_attempt_at=first,
            state="failed" if decision.gives_up else "pending",
            next_attempt_at=decision.next_attempt_at,
            claim_token=None,
        )
    if keep_schedule:
        # Not ours to move (a replay that failed, or a superseded claim): count the attempt
        # and leave state, schedule and any live claim exactly as they are.
        conn.execute(
            sql(
                "UPDATE {s}.deliveries SET attempt_count = :attempt_count, updated_at = :now "
                "WHERE id = :delivery_id",
                settings.db_schema,
            ),
            update,
        )
    else:
        conn.execute(sql(UPDATE_DELIVERY, settings.db_schema), update)
    if claim.trigger == "replay":
        conn.execute(sql(FINISH_REPLAY, settings.db_schema), params)
    exhausted = update["state"] == "failed" and current.state != "failed"
    after_attempt(
        conn,
        settings,
        endpoint_id=claim.endpoint_id,
        project_id=job.project_id,
        delivery={
            "delivery_id": claim.delivery_id,
            "event_id": claim.event_id,
            "endpoint_id": claim.endpoint_id,
            "attempts": number,
            "last_status": outcome.status,
            "last_error_kind": outcome.error_kind,
        },
        status=outcome.status,
        error_kind=outcome.error_kind,
        succeeded=outcome.is_success,
        exhausted=exhausted,
        now=now,
    )
    conn.execute(
        sql(INSERT_ATTEMPT, settings.db_schema),
        {
            "delivery_id": claim.delivery_id,
            "event_id": claim.event_id,
            "endpoint_id": claim.endpoint_id,
            "number": number,
            "trigger": claim.trigger,
            "started_at": started_at,
            "duration_ms": round(outcome.duration.total_seconds() * 1000),
            "request_url": job.url,
            "request_headers": json.dumps(request_headers),
            "response_status": outcome.status,
            "response_headers": json.dumps(outcome.response_headers),
            "response_body": outcome.response_body,
            "error_kind": outcome.error_kind,
            "error_message": outcome.error_message,
        },
    )
    return RecordedAttempt(
        number=number, state=update["state"], next_attempt_at=update["next_attempt_at"]
    )


def _claim(row: Any, trigger: str) -> Claim:
    return Claim(
        delivery_id=row.id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        attempt=row.attempt_count + 1,
        claim_token=str(row.claim_token),
        trigger=trigger,
    )
