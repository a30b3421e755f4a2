"""Claims and leases: how a due delivery becomes exactly one in-flight attempt.

Postgres is the only source of truth for what is due. The dispatcher *claims* due rows
(``FOR UPDATE SKIP LOCKED``, so several dispatchers never take the same row), stamping each
with a fresh claim token and a lease. The Celery message only carries ids and the token: if it
is lost (broker flushed, worker killed) the lease runs out and the row is claimed again. A
worker starts only while the lease still covers the deadline and half the rest (renewing it
first otherwise, as when the message waited long in the broker), and moves the delivery only
under its token: a stale message never reschedules a newer claim. Its attempt is stored
whatever happened meanwhile, and a 2xx settles the delivery whoever sent it (the receiver
has the event). Replays are claimed through the same per-endpoint admission.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import Connection

from webhooks.admission import (
    Candidate,
    IsolationPolicy,
    RateLimit,
    admit,
    batch_quota,
    take_turns,
)
from webhooks.database import driver_sql, sql
from webhooks.delivery import DeliveryOutcome
from webhooks.endpoints import active_secrets
from webhooks.health import after_attempt, after_exhausted
from webhooks.schedule import RetryPolicy, decide_retry, parse_retry_after
from webhooks.settings import Settings, attempts_channel

# Rows whose worker vanished (or whose message the broker lost) become due again, keeping
# the time they were first due: they go ahead of work that fell due since, not behind it.
# `reclaims` counts the leases in a row that ran out with no attempt recorded (recording
# resets it): a delivery whose worker keeps dying before it records is named in the log.
REAP_DELIVERIES = """
UPDATE {s}.deliveries
SET state = 'pending', next_attempt_at = coalesce(next_attempt_at, :now), claim_token = NULL,
    lease_expires_at = NULL, updated_at = :now, reclaims = reclaims + 1
WHERE state = 'delivering' AND lease_expires_at < :now
RETURNING id, endpoint_id, reclaims
"""
# Held rows whose endpoint is enabled. `enable_endpoint` releases the held rows it sees, but
# a publish that read the endpoint as disabled and committed after the enable wrote a held
# row the enable could not see: this pass, run anyway, finds it.
RELEASE_HELD = """
UPDATE {s}.deliveries d SET next_attempt_at = :now, updated_at = :now
FROM {s}.endpoints e
WHERE d.state = 'pending' AND d.next_attempt_at IS NULL
  AND e.id = d.endpoint_id AND e.enabled
"""
# Replays of disabled endpoints leave the due index (due at 'infinity'), as held deliveries
# do (next_attempt_at NULL), and come back due now once their endpoint is enabled.
HOLD_REPLAYS = """
UPDATE {s}.replays r SET due_at = 'infinity'
FROM {s}.deliveries d, {s}.endpoints e
WHERE r.state = 'pending' AND r.due_at < 'infinity'
  AND d.id = r.delivery_id AND e.id = d.endpoint_id AND NOT e.enabled
"""
RELEASE_HELD_REPLAYS = """
UPDATE {s}.replays r SET due_at = :now
FROM {s}.deliveries d, {s}.endpoints e
WHERE r.state = 'pending' AND r.due_at = 'infinity'
  AND d.id = r.delivery_id AND e.id = d.endpoint_id AND e.enabled
"""
REAP_REPLAYS = """
UPDATE {s}.replays SET state = 'pending', claim_token = NULL, lease_expires_at = NULL
WHERE state = 'delivering' AND lease_expires_at < :now
"""

# Attempts in flight per endpoint, scheduled and replayed alike: both count against the cap.
BUSY = """busy AS MATERIALIZED (
    SELECT endpoint_id, count(*) AS n FROM (
        SELECT endpoint_id FROM {s}.deliveries WHERE state = 'delivering'
        UNION ALL
        SELECT d.endpoint_id FROM {s}.replays r JOIN {s}.deliveries d ON d.id = r.delivery_id
        WHERE r.state = 'delivering'
    ) flying
    GROUP BY endpoint_id
)"""
# Due rows, oldest first, locked for this transaction (SKIP LOCKED: another dispatcher gets
# the next ones). OF d locks only the delivery rows, not the endpoint rows joined to skip
# disabled endpoints and to read their breaker state, in-flight count (endpoints at their cap
# are passed over; admission reads the count again under `LOCK_ENDPOINTS`) and whether they
# are rate-limited, all in this one round trip. `admission.admit` then decides. A row of a
# deleted endpoint is due only if a publish that read the endpoint before the delete committed
# after it (`endpoints.delete_endpoint` cancels every row it can see): it is cancelled, not
# claimed.
DUE_CANDIDATES = (
    "WITH "
    + BUSY
    + """
SELECT d.id, d.endpoint_id, e.consecutive_failures, e.breaker_open_until,
       coalesce(b.n, 0) AS in_flight, e.rate_limit IS NOT NULL AS rate_limited,
       d.first_attempt_at + :window AS window_end, e.deleted_at IS NOT NULL AS deleted
FROM {s}.deliveries d
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.enabled
LEFT JOIN busy b ON b.endpoint_id = d.endpoint_id
WHERE d.state = 'pending' AND d.next_attempt_at <= :now AND coalesce(b.n, 0) < :concurrency
ORDER BY d.next_attempt_at
LIMIT :limit
FOR UPDATE OF d SKIP LOCKED
"""
)
# Queued replays, the same way: a disabled endpoint's replays stay queued (held) until it is
# enabled, and those of an endpoint at its cap are passed over in SQL, not in Python.
REPLAY_CANDIDATES = (
    "WITH "
    + BUSY
    + """
SELECT r.id AS replay_id, d.id, d.endpoint_id, e.consecutive_failures, e.breaker_open_until,
       coalesce(b.n, 0) AS in_flight, e.rate_limit IS NOT NULL AS rate_limited
FROM {s}.replays r
JOIN {s}.deliveries d ON d.id = r.delivery_id
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.enabled
LEFT JOIN busy b ON b.endpoint_id = d.endpoint_id
WHERE r.state = 'pending' AND r.due_at <= :now AND coalesce(b.n, 0) < :concurrency
ORDER BY r.due_at, r.id
LIMIT :limit
FOR UPDATE OF r SKIP LOCKED
"""
)
# One dispatcher at a time decides for an endpoint. The in-flight counts read with the due
# rows are as of the start of that statement, and SKIP LOCKED hands two dispatchers claiming
# at once different rows of the same endpoint: each would fill the same free slots, and an
# endpoint at its cap would get up to twice its cap. So a dispatcher takes its candidates'
# endpoints' advisory locks (transaction-scoped, in id order so that two never wait on each
# other in a cycle; keyed by schema too, so deployments sharing a database never wait on
# each other), then reads their counts again: whoever claimed for them before has committed
# by then, and is counted.
LOCK_ENDPOINTS = """
SELECT pg_advisory_xact_lock(hashtextextended(:namespace || e, 0))
FROM unnest(CAST(:endpoint_ids AS text[])) AS e
"""
IN_FLIGHT = (
    "WITH "
    + BUSY
    + """
SELECT endpoint_id, n FROM busy WHERE endpoint_id = ANY (CAST(:endpoint_ids AS text[]))
"""
)
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
# The same end as `endpoints.CANCEL_ENDPOINT_DELIVERIES`, for rows found due.
CANCEL_DELIVERIES = """
UPDATE {s}.deliveries
SET state = 'cancelled', next_attempt_at = NULL, claim_token = NULL, lease_expires_at = NULL,
    updated_at = :now
WHERE id = ANY (CAST(:ids AS text[])) AND state = 'pending'
"""
# Rows whose deferral would pass their retry window's end: failed, as after a last retry.
EXPIRE_DELIVERIES = """
UPDATE {s}.deliveries d SET state = 'failed', next_attempt_at = NULL, updated_at = :now
WHERE d.id = ANY (CAST(:ids AS text[]))
RETURNING d.id, d.event_id, d.endpoint_id, d.attempt_count, d.project_id, d.mode
"""
CLAIM_REPLAYS = """
UPDATE {s}.replays r
SET state = 'delivering', claim_token = gen_random_uuid(), lease_expires_at = :lease_until
FROM {s}.deliveries d
WHERE r.id = ANY (CAST(:ids AS bigint[])) AND d.id = r.delivery_id
RETURNING d.id, d.event_id, d.endpoint_id, d.attempt_count, r.claim_token
"""
DEFER_REPLAYS = """
UPDATE {s}.replays r SET due_at = v.at
FROM unnest(CAST(:ids AS bigint[]), CAST(:ats AS timestamptz[])) AS v (id, at)
WHERE r.id = v.id
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
# The earliest time any pending delivery or replay falls due; the first entry of each due
# index (held replays, due at 'infinity', are left out). Read right
# after a claim, a time already past means due rows were left behind: their endpoints are
# at their cap (or another dispatcher holds them), and the dispatcher looks again within
# `admission.CAPACITY_RECHECK` instead of sleeping until the poll.
NEXT_DUE = """
SELECT least(
    (SELECT min(next_attempt_at) FROM {s}.deliveries WHERE state = 'pending'),
    (SELECT min(due_at) FROM {s}.replays WHERE state = 'pending' AND due_at < 'infinity'))
"""

# The worker's first step: prove the claim is still ours and read what to send. A plain read
# (no row version, no WAL, no commit to wait for) while the lease still covers the attempt
# and its recording; only a message that waited long in the queue renews the lease first.
# No row back means a newer claim exists (or the work is done, or the delivery was cancelled
# with its endpoint, which clears the token): do nothing. The URL is read here, at the start
# of each attempt, so `endpoint update --url` reaches every delivery not yet on the wire.
READ_SCHEDULED = """
SELECT ev.payload, e.url, e.secrets, ev.project_id, d.mode, d.lease_expires_at
FROM {s}.deliveries d
JOIN {s}.events ev ON ev.id = d.event_id
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.deleted_at IS NULL
WHERE d.id = :delivery_id AND d.claim_token = CAST(:token AS uuid) AND d.state = 'delivering'
"""
BEGIN_SCHEDULED = """
UPDATE {s}.deliveries d SET lease_expires_at = :lease_until
FROM {s}.events ev, {s}.endpoints e
WHERE d.id = :delivery_id AND d.claim_token = CAST(:token AS uuid) AND d.state = 'delivering'
  AND ev.id = d.event_id AND e.id = d.endpoint_id AND e.deleted_at IS NULL
RETURNING ev.payload, e.url, e.secrets, ev.project_id, d.mode
"""
# A replay of a cancelled delivery (its endpoint was deleted after the replay was claimed)
# is closed here instead of sent: left `delivering`, its lease would run out and it would be
# claimed again, forever. `sendable` false: closed, nothing to send.
BEGIN_REPLAY = """
UPDATE {s}.replays r
SET lease_expires_at = CASE WHEN t.sendable THEN CAST(:lease_until AS timestamptz) END,
    state = CASE WHEN t.sendable THEN r.state ELSE 'done' END,
    claim_token = CASE WHEN t.sendable THEN r.claim_token END
FROM (SELECT d.id, ev.payload, e.url, e.secrets, ev.project_id, d.mode,
             d.state <> 'cancelled' AND e.deleted_at IS NULL AS sendable
      FROM {s}.deliveries d
      JOIN {s}.events ev ON ev.id = d.event_id
      JOIN {s}.endpoints e ON e.id = d.endpoint_id
      WHERE d.id = :delivery_id) t
WHERE r.claim_token = CAST(:token AS uuid) AND r.state = 'delivering' AND t.id = r.delivery_id
RETURNING t.payload, t.url, t.secrets, t.project_id, t.mode, t.sendable
"""

# `recorded`: the number of the attempt already stored under this claim, if a first write
# committed but its acknowledgement was lost (the writer then tried again).
LOCK_DELIVERY = """
SELECT attempt_count, failed_attempts, first_attempt_at, state, next_attempt_at,
       claim_token = CAST(:token AS uuid) AS owns_claim,
       (SELECT number FROM {s}.attempts WHERE claim_token = CAST(:token AS uuid)) AS recorded
FROM {s}.deliveries WHERE id = :delivery_id FOR UPDATE
"""
UPDATE_DELIVERY = """
UPDATE {s}.deliveries
SET attempt_count = :attempt_count, failed_attempts = :failed_attempts,
    first_attempt_at = :first_attempt_at, state = :state, next_attempt_at = :next_attempt_at,
    claim_token = :claim_token, lease_expires_at = :lease_expires_at, updated_at = :now,
    reclaims = 0
WHERE id = :delivery_id
"""
# The columns of an attempt row, in the order both INSERTs below give their values.
ATTEMPT_COLUMNS = """(delivery_id, event_id, endpoint_id, project_id, mode, number, trigger,
    started_at, duration_ms, request_url, request_headers, response_status, response_headers,
    response_body, error_kind, error_message, claim_token)"""

# Both ways of storing an attempt end with this: with `WEBHOOKS_NOTIFY` on, a notification
# on the attempts channel whose payload is the new row's id, sent when the transaction
# commits (the HTTP API's stream reads the rows by id; a rolled-back attempt notifies no one).
NOTIFY_ATTEMPT = """
RETURNING id, number,
    CASE WHEN CAST(:notify AS boolean) THEN pg_notify(:attempts_channel, CAST(id AS text))
    END AS notified
"""
# A 2xx under the current claim, the common case, in one statement (one round trip, atomic
# on its own): settle the delivery, close the endpoint's breaker and reset its count of
# failures in a row if either is set (`health.after_attempt` does the same on the general
# path), and store the attempt numbered from the row it updated (and notify, as above). No
# row back: the claim moved on (replayed, superseded, reaped), or the endpoint is failing
# and its recovery must be announced, and `record_attempt`'s locked path decides instead.
RECORD_SUCCESS = (
    """
WITH d AS (
    UPDATE {s}.deliveries
    SET state = 'succeeded', attempt_count = attempt_count + 1, next_attempt_at = NULL,
        claim_token = NULL, lease_expires_at = NULL, updated_at = :now, reclaims = 0
    WHERE id = :delivery_id AND claim_token = CAST(:token AS uuid) AND state = 'delivering'
      AND NOT EXISTS (SELECT 1 FROM {s}.endpoints
                      WHERE id = :endpoint_id AND failing_since IS NOT NULL)
    RETURNING id, attempt_count
), healthy AS (
    UPDATE {s}.endpoints SET consecutive_failures = 0, breaker_open_until = NULL,
        failures_in_row = 0, failing_reason = NULL
    WHERE id = :endpoint_id AND EXISTS (SELECT 1 FROM d)
      AND (consecutive_failures <> 0 OR breaker_open_until IS NOT NULL
           OR failures_in_row <> 0)
)
INSERT INTO {s}.attempts """
    + ATTEMPT_COLUMNS
    + """
SELECT d.id, :event_id, :endpoint_id, :project_id, :mode, d.attempt_count, 'scheduled',
    :started_at, :duration_ms,
    :request_url, CAST(:request_headers AS jsonb), :response_status,
    CAST(:response_headers AS jsonb), :response_body, NULL, NULL, CAST(:token AS uuid)
FROM d"""
    + NOTIFY_ATTEMPT
)
# `outcome` is what a recovery's progress counts: attempts made, and how they went.
FINISH_REPLAY = """
UPDATE {s}.replays SET state = 'done', claim_token = NULL, lease_expires_at = NULL,
    outcome = :outcome
WHERE claim_token = CAST(:token AS uuid)
"""
INSERT_ATTEMPT = (
    """
INSERT INTO {s}.attempts """
    + ATTEMPT_COLUMNS
    + """
VALUES (:delivery_id, :event_id, :endpoint_id, :project_id, :mode, :number, :trigger,
    :started_at, :duration_ms,
    :request_url, CAST(:request_headers AS jsonb), :response_status,
    CAST(:response_headers AS jsonb), :response_body, :error_kind, :error_message,
    CAST(:token AS uuid))"""
    + NOTIFY_ATTEMPT
)


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
    """What a worker needs to make the attempt, read under a still-valid claim.

    Its ``repr`` (a traceback, a debugger, a log line) shows the ids, the URL and the size of
    the payload, never the signing secrets in plain text nor the payload itself.
    """

    claim: Claim
    project_id: str
    mode: str
    payload: bytes
    url: str
    secrets: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"AttemptJob(claim={self.claim!r}, project_id={self.project_id!r}, "
            f"payload=<{len(self.payload)} bytes>, url={self.url!r}, "
            f"secrets=<{len(self.secrets)} masked>)"
        )


@dataclass(frozen=True)
class RecordedAttempt:
    """The attempt as stored, and where it left the delivery."""

    number: int
    state: str
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class Reclaimed:
    """A delivery whose lease ran out, and how many leases in a row did with no attempt."""

    delivery_id: str
    endpoint_id: str
    reclaims: int


@dataclass(frozen=True)
class Reaped:
    """What one reaping pass made due again."""

    deliveries: list[Reclaimed]
    replays: int

    @property
    def count(self) -> int:
        """Deliveries and replays made due again."""
        return len(self.deliveries) + self.replays


def reap_expired_leases(conn: Connection, settings: Settings, now: datetime) -> Reaped:
    """Make deliveries and replays whose lease ran out due again."""
    deliveries = [
        Reclaimed(row.id, row.endpoint_id, int(row.reclaims))
        for row in conn.execute(sql(REAP_DELIVERIES, settings.db_schema), {"now": now})
    ]
    replays = conn.execute(sql(REAP_REPLAYS, settings.db_schema), {"now": now}).rowcount
    return Reaped(deliveries, int(replays))


def release_held(conn: Connection, settings: Settings, now: datetime) -> int:
    """Make held deliveries and replays of enabled endpoints due now; return how many.

    Replays of disabled endpoints are held first (a disable does not touch replays).
    """
    schema = settings.db_schema
    conn.execute(sql(HOLD_REPLAYS, schema))
    released = conn.execute(sql(RELEASE_HELD_REPLAYS, schema), {"now": now}).rowcount
    return int(conn.execute(sql(RELEASE_HELD, schema), {"now": now}).rowcount) + int(released)


@dataclass(frozen=True)
class ClaimBatch:
    """What one claim round took, how many due rows wait only for a free slot (or for their
    kind's share of the next batch), whether queued replays were left for the next round,
    and, per endpoint claimed, which kind went last (for `admission.take_turns`)."""

    claims: list[Claim]
    waiting: int = 0
    replays_left: bool = False
    last_turn: dict[str, str] = field(default_factory=dict)


def claim_due(
    conn: Connection,
    settings: Settings,
    now: datetime,
    limit: int,
    *,
    replays: bool = True,
    last_turn: Mapping[str, str] | None = None,
) -> ClaimBatch:
    """Claim up to ``limit`` due deliveries and queued replays, through one admission.

    Both kinds pass the same per-endpoint cap (counting both), breaker and rate limit, and
    take turns (`admission.take_turns`, `admission.batch_quota`). Without ``replays`` the
    replays table is not looked at (one statement less for a dispatcher that knows none
    were queued).

    Args:
        last_turn: per endpoint, the kind claimed last there by the previous batch.
    """
    schema = settings.db_schema
    params = {
        "now": now,
        "limit": limit,
        "lease_until": now + settings.lease,
        "concurrency": settings.endpoint_concurrency,
        "window": settings.retry_window,
    }
    due = conn.execute(sql(DUE_CANDIDATES, schema), params).all()
    cancelled = [row.id for row in due if row.deleted]
    if cancelled:
        conn.execute(sql(CANCEL_DELIVERIES, schema), {"ids": cancelled, "now": now})
        due = [row for row in due if not row.deleted]
    queued = conn.execute(sql(REPLAY_CANDIDATES, schema), params).all() if replays else []
    if not due and not queued:
        return ClaimBatch([])
    scheduled = [
        Candidate(
            row.id,
            row.endpoint_id,
            row.consecutive_failures,
            row.breaker_open_until,
            row.window_end,
        )
        for row in due
    ]
    replayed = [
        Candidate(
            row.id,
            row.endpoint_id,
            row.consecutive_failures,
            row.breaker_open_until,
            replay_id=row.replay_id,
        )
        for row in queued
    ]
    in_flight = _lock_endpoints(conn, settings, {row.endpoint_id for row in [*due, *queued]})
    limited = sorted({row.endpoint_id for row in [*due, *queued] if row.rate_limited})
    rates: dict[str, RateLimit] = {}
    if limited:
        rates = {
            row.id: RateLimit(row.rate_limit, row.next_send_at)
            for row in conn.execute(sql(RATE_LIMITS, schema), {"endpoint_ids": limited})
        }
    ordered = take_turns(scheduled, replayed, last_turn)
    admission = admit(
        ordered,
        in_flight,
        IsolationPolicy.from_settings(settings),
        now,
        rates,
        batch_quota(limit, len(scheduled), len(replayed)),
    )
    by_key = {c.key: c for c in ordered}
    if admission.next_send_at:
        conn.execute(
            sql(ADVANCE_SEND_SLOTS, schema),
            {"ids": list(admission.next_send_at), "ats": list(admission.next_send_at.values())},
        )
    _defer(conn, settings, admission.defer, by_key, now)
    if admission.expire:
        _expire(conn, settings, admission.expire, now)
    claim_ids = [by_key[k].delivery_id for k in admission.claim if by_key[k].replay_id is None]
    replay_ids = [by_key[k].replay_id for k in admission.claim if by_key[k].replay_id is not None]
    claims: list[Claim] = []
    if claim_ids:
        claimed = conn.execute(sql(CLAIM_DELIVERIES, schema), {**params, "ids": claim_ids})
        claims = [_claim(row, "scheduled") for row in claimed]
    if replay_ids:
        claimed = conn.execute(sql(CLAIM_REPLAYS, schema), {**params, "ids": replay_ids})
        claims += [_claim(row, "replay") for row in claimed]
    turns = {by_key[k].endpoint_id: by_key[k].trigger for k in admission.claim}
    decided = len(replay_ids) + sum(1 for k in admission.defer if by_key[k].replay_id is not None)
    return ClaimBatch(
        claims,
        admission.waiting,
        replays_left=len(queued) >= limit or decided < len(queued),
        last_turn=turns,
    )


def _lock_endpoints(conn: Connection, settings: Settings, endpoint_ids: set[str]) -> dict[str, int]:
    """Take the endpoints' claim locks (`LOCK_ENDPOINTS`); return their attempts in flight."""
    schema = settings.db_schema
    params = {"namespace": f"{schema}:", "endpoint_ids": sorted(endpoint_ids)}
    conn.execute(sql(LOCK_ENDPOINTS, schema), params).all()
    return {row.endpoint_id: int(row.n) for row in conn.execute(sql(IN_FLIGHT, schema), params)}


def _defer(
    conn: Connection,
    settings: Settings,
    defer: Mapping[str, datetime],
    by_key: Mapping[str, Candidate],
    now: datetime,
) -> None:
    """Move deferred rows to when they may go: deliveries' next attempt, replays' due time."""
    deliveries = {by_key[k].delivery_id: at for k, at in defer.items() if not _is_replay(by_key[k])}
    replays = {by_key[k].replay_id: at for k, at in defer.items() if _is_replay(by_key[k])}
    if deliveries:
        conn.execute(
            sql(DEFER_DELIVERIES, settings.db_schema),
            {"ids": list(deliveries), "ats": list(deliveries.values()), "now": now},
        )
    if replays:
        conn.execute(
            sql(DEFER_REPLAYS, settings.db_schema),
            {"ids": list(replays), "ats": list(replays.values())},
        )


def _is_replay(candidate: Candidate) -> bool:
    return candidate.replay_id is not None


def _expire(conn: Connection, settings: Settings, ids: tuple[str, ...], now: datetime) -> None:
    expired = conn.execute(
        sql(EXPIRE_DELIVERIES, settings.db_schema), {"ids": list(ids), "now": now}
    )
    for row in expired:
        after_exhausted(
            conn,
            settings,
            endpoint_id=row.endpoint_id,
            project_id=row.project_id,
            mode=row.mode,
            delivery={
                "delivery_id": row.id,
                "event_id": row.event_id,
                "endpoint_id": row.endpoint_id,
                "attempts": row.attempt_count,
                "last_status": None,
                "last_error_kind": None,
            },
            now=now,
        )


def release_claims(
    conn: Connection, settings: Settings, claims: list[Claim], now: datetime
) -> None:
    """Give back claims whose message could not be sent, so they need not wait for the lease."""
    for claim in claims:
        statement = RELEASE_REPLAY if claim.trigger == "replay" else RELEASE_DELIVERY
        conn.execute(sql(statement, settings.db_schema), {"token": claim.claim_token, "now": now})


def next_due_at(conn: Connection, settings: Settings) -> datetime | None:
    """When the earliest pending delivery is due, maybe already (None: nothing scheduled)."""
    value: datetime | None = conn.execute(sql(NEXT_DUE, settings.db_schema)).scalar_one()
    return value


def begin_attempt(
    conn: psycopg.Connection[Any], settings: Settings, claim: Claim, now: datetime
) -> AttemptJob | None:
    """Read what to send under a claim, renewing its lease if need be; None if it is stale.

    ``conn`` is a psycopg connection in autocommit mode (`database.driver_connection`): the
    dispatcher's lease normally still covers the attempt (the message waited milliseconds),
    so this is one read. A message that waited so long that less than `renew_below`
    remains renews the lease to a whole one before anything is sent.
    """
    params = {"token": claim.claim_token, "delivery_id": claim.delivery_id}
    if claim.trigger == "scheduled":
        row = _fetch_one(conn, READ_SCHEDULED, settings, params)
        if row is None:
            return None
        lease_left = row.lease_expires_at - now if row.lease_expires_at else timedelta(0)
        if lease_left >= renew_below(settings):
            return _job(claim, row, now, settings)
    statement = BEGIN_REPLAY if claim.trigger == "replay" else BEGIN_SCHEDULED
    row = _fetch_one(conn, statement, settings, {**params, "lease_until": now + settings.lease})
    if row is None or not getattr(row, "sendable", True):
        return None
    return _job(claim, row, now, settings)


def _fetch_one(
    conn: psycopg.Connection[Any], statement: str, settings: Settings, params: dict[str, Any]
) -> Any:
    with conn.cursor(row_factory=namedtuple_row) as cursor:
        cursor.execute(driver_sql(statement, settings.db_schema), params)
        return cursor.fetchone()


def renew_below(settings: Settings) -> timedelta:
    """The least lease an attempt starts with: its deadline plus half the rest for recording."""
    return settings.timeout + (settings.lease - settings.timeout) / 2


def _job(claim: Claim, row: Any, now: datetime, settings: Settings) -> AttemptJob:
    return AttemptJob(
        claim=claim,
        project_id=row.project_id,
        mode=row.mode,
        payload=row.payload.encode("utf-8"),
        url=row.url,
        secrets=tuple(active_secrets(row.secrets, now, settings.secret_keys)),
    )


def record_success(
    conn: psycopg.Connection[Any],
    settings: Settings,
    job: AttemptJob,
    *,
    outcome: DeliveryOutcome,
    started_at: datetime,
    request_headers: dict[str, str],
    now: datetime,
) -> RecordedAttempt | None:
    """Record a 2xx under a still-current scheduled claim in one statement.

    ``conn`` is a psycopg connection in autocommit mode: the statement is its own
    transaction, which also notifies the attempt's id (`NOTIFY_ATTEMPT`). Returns None,
    having written nothing, when the claim is no longer current; the caller then records
    through `record_attempt`, which handles every case.
    """
    row = _fetch_one(
        conn,
        RECORD_SUCCESS,
        settings,
        {
            **_attempt_row(job, outcome, started_at, request_headers),
            **_notify(settings),
            "token": job.claim.claim_token,
            "now": now,
        },
    )
    if row is None:
        return None
    return RecordedAttempt(number=int(row.number), state="succeeded", next_attempt_at=None)


def record_attempt(
    conn: Connection,
    settings: Settings,
    job: AttemptJob,
    *,
    outcome: DeliveryOutcome,
    started_at: datetime,
    request_headers: dict[str, str],
    now: datetime,
    interpret: bool = True,
) -> RecordedAttempt:
    """Store the attempt and move the delivery, in the caller's (one) transaction.

    Every attempt is stored, even one made under a claim that has since been superseded: the
    request went out. Only the owner of the current claim moves a scheduled delivery; a
    replay moves it only when it succeeds, and never opens a new retry window. An attempt
    already stored under this claim (a retry after a lost commit acknowledgement) is
    returned as it is, and nothing is written twice. A ``cancelled`` delivery (its endpoint
    was deleted while the request was on the wire) stays ``cancelled``, even after a 2xx.
    The new attempt's id is notified when the transaction commits (`NOTIFY_ATTEMPT`).

    Args:
        interpret: read the response beyond its outcome (``Retry-After``, endpoint health,
            operational events). False on the fallback path (`webhooks.attempts`), after
            doing so raised: the attempt is then stored and scheduled by the plain schedule.
    """
    claim = job.claim
    params: dict[str, Any] = {"delivery_id": claim.delivery_id, "token": claim.claim_token}
    current = conn.execute(sql(LOCK_DELIVERY, settings.db_schema), params).one()
    if current.recorded is not None:
        return RecordedAttempt(
            number=current.recorded, state=current.state, next_attempt_at=current.next_attempt_at
        )
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
    is_cancelled = current.state == "cancelled"
    if outcome.is_success and not is_cancelled:
        # A 2xx settles the delivery whoever sent it: a replay, the current claim, or a
        # superseded one whose lease ran out (clearing the token stops the newer claim
        # before it sends, if it has not started yet).
        update.update(state="succeeded", claim_token=None)
        keep_schedule = False
    elif claim.trigger == "scheduled" and current.owns_claim:
        keep_schedule = False
        first = current.first_attempt_at or started_at
        retry_after = None
        if interpret:
            retry_after = parse_retry_after(
                outcome.status, outcome.retry_after, now=now, limit=settings.retry_window
            )
        decision = decide_retry(
            RetryPolicy.from_settings(settings),
            failures=current.failed_attempts + 1,
            first_attempt_at=first,
            now=now,
            retry_after=retry_after,
        )
        update.update(
            failed_attempts=current.failed_attempts + 1,
            first_attempt_at=first,
            state="failed" if decision.gives_up else "pending",
            next_attempt_at=decision.next_attempt_at,
            claim_token=None,
        )
    if keep_schedule:
        # Not ours to move (a replay that failed, a superseded claim, or a request that was
        # on the wire when its endpoint was deleted): count the attempt and leave state,
        # schedule and any live claim exactly as they are; `cancelled` stays `cancelled`.
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
        conn.execute(
            sql(FINISH_REPLAY, settings.db_schema),
            {**params, "outcome": "succeeded" if outcome.is_success else "failed"},
        )
    exhausted = update["state"] == "failed" and current.state != "failed"
    # A deleted endpoint has no health left to track and no one to warn.
    if interpret and not is_cancelled:
        _after_attempt(conn, settings, job, outcome, number=number, exhausted=exhausted, now=now)
    conn.execute(
        sql(INSERT_ATTEMPT, settings.db_schema),
        {
            **_attempt_row(job, outcome, started_at, request_headers),
            **_notify(settings),
            "number": number,
            "trigger": claim.trigger,
            "error_kind": outcome.error_kind,
            "error_message": outcome.error_message,
            "token": claim.claim_token,
        },
    )
    return RecordedAttempt(
        number=number, state=update["state"], next_attempt_at=update["next_attempt_at"]
    )


def _after_attempt(
    conn: Connection,
    settings: Settings,
    job: AttemptJob,
    outcome: DeliveryOutcome,
    *,
    number: int,
    exhausted: bool,
    now: datetime,
) -> None:
    claim = job.claim
    after_attempt(
        conn,
        settings,
        endpoint_id=claim.endpoint_id,
        project_id=job.project_id,
        mode=job.mode,
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
        error_message=outcome.error_message,
        succeeded=outcome.is_success,
        exhausted=exhausted,
        now=now,
    )


def _notify(settings: Settings) -> dict[str, Any]:
    return {"notify": settings.notify, "attempts_channel": attempts_channel(settings.db_schema)}


def _attempt_row(
    job: AttemptJob,
    outcome: DeliveryOutcome,
    started_at: datetime,
    request_headers: dict[str, str],
) -> dict[str, Any]:
    claim = job.claim
    return {
        "delivery_id": claim.delivery_id,
        "event_id": claim.event_id,
        "endpoint_id": claim.endpoint_id,
        "project_id": job.project_id,
        "mode": job.mode,
        "started_at": started_at,
        "duration_ms": round(outcome.duration.total_seconds() * 1000),
        "request_url": job.url,
        "request_headers": json.dumps(request_headers),
        "response_status": outcome.status,
        "response_headers": json.dumps(outcome.response_headers),
        "response_body": outcome.response_body,
    }


def _claim(row: Any, trigger: str) -> Claim:
    return Claim(
        delivery_id=row.id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        attempt=row.attempt_count + 1,
        claim_token=str(row.claim_token),
        trigger=trigger,
    )
