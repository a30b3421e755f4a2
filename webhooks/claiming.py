"""Claiming: how a due delivery becomes exactly one in-flight attempt (the dispatcher's side).

Postgres is the only source of truth for what is due. The dispatcher *claims* due rows
(``FOR UPDATE SKIP LOCKED``, so several dispatchers never take the same row), stamping each
with a fresh claim token and a lease, and only after committing sends the claims to the
workers (`webhooks.messages`): ids only. If a message is lost (broker flushed, worker killed)
the lease runs out, the row is *reaped* and claimed again. Replays are claimed through the
same per-endpoint admission (`webhooks.admission`). What a worker does with a claim is
`webhooks.recording`.

Every statement is at the top of this module, named, in the order a round runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.admission import (
    Candidate,
    IsolationPolicy,
    RateLimit,
    admit,
    batch_quota,
    take_turns,
)
from webhooks.database import sql
from webhooks.health import after_exhausted
from webhooks.messages import Claim, Trigger
from webhooks.settings import Settings

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
       d.first_attempt_at + :window AS window_end, e.deleted_at IS NOT NULL AS deleted,
       (SELECT coalesce(sum(n), 0) FROM busy) AS everywhere
FROM {s}.deliveries d
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.enabled
LEFT JOIN busy b ON b.endpoint_id = d.endpoint_id
WHERE d.state = 'pending' AND d.next_attempt_at <= :now AND coalesce(b.n, 0) < :concurrency
ORDER BY d.next_attempt_at
LIMIT :limit
FOR UPDATE OF d SKIP LOCKED
"""
)
# The same rows, and their endpoints' claim locks (`LOCK_ENDPOINTS`) taken in the same round
# trip, for a round that looks at no replays (most of them): the locks are taken after the
# rows are read, in id order, and held by the time the next statement (`IN_FLIGHT`) takes its
# snapshot, which is all the cap needs. A round that looks at replays too takes them after
# both reads, over both sets at once, so that every dispatcher takes its locks in one
# id-ordered pass (two passes could wait on each other in a cycle).
DUE_CANDIDATES_LOCKED = (
    "WITH "
    + BUSY
    + """, due AS MATERIALIZED (
SELECT d.id, d.endpoint_id, e.consecutive_failures, e.breaker_open_until,
       coalesce(b.n, 0) AS in_flight, e.rate_limit IS NOT NULL AS rate_limited,
       d.first_attempt_at + :window AS window_end, e.deleted_at IS NOT NULL AS deleted,
       (SELECT coalesce(sum(n), 0) FROM busy) AS everywhere, d.next_attempt_at
FROM {s}.deliveries d
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.enabled
LEFT JOIN busy b ON b.endpoint_id = d.endpoint_id
WHERE d.state = 'pending' AND d.next_attempt_at <= :now AND coalesce(b.n, 0) < :concurrency
ORDER BY d.next_attempt_at
LIMIT :limit
FOR UPDATE OF d SKIP LOCKED
), locked AS MATERIALIZED (
SELECT count(pg_advisory_xact_lock(hashtextextended(:namespace || endpoint_id, 0))) AS n
FROM (SELECT DISTINCT endpoint_id FROM due ORDER BY endpoint_id) AS ids
)
SELECT due.* FROM due CROSS JOIN locked ORDER BY due.next_attempt_at
"""
)
# Queued replays, the same way: a disabled endpoint's replays stay queued (held) until it is
# enabled, and those of an endpoint at its cap are passed over in SQL, not in Python.
REPLAY_CANDIDATES = (
    "WITH "
    + BUSY
    + """
SELECT r.id AS replay_id, d.id, d.endpoint_id, e.consecutive_failures, e.breaker_open_until,
       coalesce(b.n, 0) AS in_flight, e.rate_limit IS NOT NULL AS rate_limited,
       (SELECT coalesce(sum(n), 0) FROM busy) AS everywhere
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
    and, per endpoint claimed, which kind went last (for `admission.take_turns`); how many
    attempts were in flight everywhere, and which endpoints lately gave no response."""

    claims: list[Claim]
    waiting: int = 0
    replays_left: bool = False
    last_turn: dict[str, Trigger] = field(default_factory=dict)
    # Attempts in flight everywhere before this round, and the endpoints claimed for whose
    # last attempt got no response (for `messages.group_claims`).
    in_flight: int = 0
    unsteady: frozenset[str] = frozenset()


def claim_due(
    conn: Connection,
    settings: Settings,
    now: datetime,
    limit: int,
    *,
    replays: bool = True,
    last_turn: Mapping[str, Trigger] | None = None,
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
    # Without replays, the due rows' statement takes the endpoint locks as well.
    locked = not replays
    statement = DUE_CANDIDATES_LOCKED if locked else DUE_CANDIDATES
    due = conn.execute(sql(statement, schema), {**params, "namespace": f"{schema}:"}).all()
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
    in_flight = _lock_endpoints(
        conn, settings, {row.endpoint_id for row in [*due, *queued]}, locked=locked
    )
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
        claims = [_claim(row, Trigger.SCHEDULED) for row in claimed]
    if replay_ids:
        claimed = conn.execute(sql(CLAIM_REPLAYS, schema), {**params, "ids": replay_ids})
        claims += [_claim(row, Trigger.REPLAY) for row in claimed]
    turns = {by_key[k].endpoint_id: by_key[k].trigger for k in admission.claim}
    decided = len(replay_ids) + sum(1 for k in admission.defer if by_key[k].replay_id is not None)
    return ClaimBatch(
        claims,
        admission.waiting,
        replays_left=len(queued) >= limit or decided < len(queued),
        last_turn=turns,
        in_flight=max(int(row.everywhere) for row in [*due, *queued]),
        unsteady=frozenset(row.endpoint_id for row in [*due, *queued] if row.consecutive_failures),
    )


def _lock_endpoints(
    conn: Connection, settings: Settings, endpoint_ids: set[str], *, locked: bool
) -> dict[str, int]:
    """Take the endpoints' claim locks (`LOCK_ENDPOINTS`) unless ``locked`` (taken with the
    due rows, `DUE_CANDIDATES_LOCKED`); return their attempts in flight."""
    schema = settings.db_schema
    params = {"namespace": f"{schema}:", "endpoint_ids": sorted(endpoint_ids)}
    if not locked:
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
        statement = RELEASE_REPLAY if claim.trigger is Trigger.REPLAY else RELEASE_DELIVERY
        conn.execute(sql(statement, settings.db_schema), {"token": claim.claim_token, "now": now})


def next_due_at(conn: Connection, settings: Settings) -> datetime | None:
    """When the earliest pending delivery is due, maybe already (None: nothing scheduled)."""
    value: datetime | None = conn.execute(sql(NEXT_DUE, settings.db_schema)).scalar_one()
    return value


def _claim(row: Any, trigger: Trigger) -> Claim:
    return Claim(
        delivery_id=row.id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        attempt=row.attempt_count + 1,
        claim_token=str(row.claim_token),
        trigger=trigger,
    )
