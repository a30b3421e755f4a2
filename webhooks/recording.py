"""Recording: what a worker does with a claim, from proving it to storing the attempt.

The story of one attempt, in the order it happens:

1. `begin_attempts`: prove each claim is still current and read what to send (one read for a
   whole batch of fresh scheduled claims; a lease renewed first only for a message that
   waited long in the broker). A claim that is no longer current sends nothing.
2. The worker signs and sends (`webhooks.attempts`); from then on the attempt is stored
   whatever happened meanwhile: the request went out.
3. `decide`, a pure function, says where the attempt leaves the delivery: a `Transition`
   (next state, next attempt time, failed-attempt count, replay bookkeeping, what the
   endpoint's health learns, whether the delivery just exhausted its window). This is the
   only place that decides what "success" or "failure" means for a delivery.
4. The transition is carried out one of two ways. `settle_successes`: 2xx outcomes under a
   still-current claim of a healthy endpoint, as many as finished together, in one statement
   (the statement's WHERE is exactly the case in which `decide` gives `SETTLED`). Everything
   else, `record_attempt`: the delivery locked, `decide` run on it as locked, the transition
   written, the endpoint's health updated (`webhooks.health`) in the same transaction.

One way to the database: SQLAlchemy Core with the named statements below (`database.sql`),
on the worker's engine. Reads and the batched settle run on autocommit connections (one
round trip each, no BEGIN/COMMIT); the locked path is one transaction. Each recording
statement or transaction notifies the attempts channel once (`WEBHOOKS_NOTIFY`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.delivery import DeliveryOutcome
from webhooks.endpoints import active_secrets
from webhooks.health import after_attempt
from webhooks.messages import Claim, Trigger
from webhooks.schedule import RetryPolicy, decide_retry, parse_retry_after
from webhooks.settings import Settings, attempts_channel

# -- statements ------------------------------------------------------------------------------

# Fresh scheduled claims of a batch, proven and read in one statement. A plain read (no row
# version, no WAL, no commit to wait for) while the lease still covers the attempt and its
# recording. A claim with no row back has been superseded (or its work is done, or it was
# cancelled with its endpoint, which clears the token): nothing is sent. The URL is read here,
# at the start of each attempt, so `endpoint update --url` reaches every delivery not yet on
# the wire.
READ_SCHEDULED = """
SELECT d.id AS delivery_id, CAST(d.claim_token AS text) AS claim_token, ev.payload, e.url,
       e.secrets, ev.project_id, d.mode, d.lease_expires_at
FROM unnest(CAST(:delivery_ids AS text[]), CAST(:tokens AS uuid[])) AS c (delivery_id, token)
JOIN {s}.deliveries d
  ON d.id = c.delivery_id AND d.claim_token = c.token AND d.state = 'delivering'
JOIN {s}.events ev ON ev.id = d.event_id
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.deleted_at IS NULL
"""
# A message that waited so long that its lease no longer covers the attempt renews it first.
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

# The locked path. `recorded`: the number of the attempt already stored under this claim, if
# a first write committed but its acknowledgement was lost (the writer then tried again).
LOCK_DELIVERY = """
SELECT attempt_count, failed_attempts, first_attempt_at, state, next_attempt_at,
       claim_token IS NOT DISTINCT FROM CAST(:token AS uuid) AS owns_claim,
       (SELECT number FROM {s}.attempts WHERE claim_token = CAST(:token AS uuid)) AS recorded
FROM {s}.deliveries WHERE id = :delivery_id FOR UPDATE
"""
# A transition that moves the delivery: state, schedule and counts; the claim is over.
MOVE_DELIVERY = """
UPDATE {s}.deliveries
SET attempt_count = :number, failed_attempts = :failed_attempts,
    first_attempt_at = :first_attempt_at, state = :state, next_attempt_at = :next_attempt_at,
    claim_token = NULL, lease_expires_at = NULL, updated_at = :now, reclaims = 0
WHERE id = :delivery_id
"""
# A transition that is not this attempt's to make (a replay that failed, a superseded claim,
# a request on the wire when its endpoint was deleted): count the attempt, nothing else.
COUNT_ATTEMPT = """
UPDATE {s}.deliveries SET attempt_count = :number, updated_at = :now WHERE id = :delivery_id
"""
# `outcome` is what a recovery's progress counts: attempts made, and how they went.
FINISH_REPLAY = """
UPDATE {s}.replays SET state = 'done', claim_token = NULL, lease_expires_at = NULL,
    outcome = :outcome
WHERE claim_token = CAST(:token AS uuid)
"""
# The columns of an attempt row, in the order both INSERTs below give their values.
ATTEMPT_COLUMNS = """(delivery_id, event_id, endpoint_id, project_id, mode, number, trigger,
    started_at, duration_ms, request_url, request_headers, response_status, response_headers,
    response_body, error_kind, error_message, claim_token)"""
# With `WEBHOOKS_NOTIFY` on, one notification on the attempts channel when the transaction
# commits (a rolled-back attempt notifies no one); the API's stream reads new rows by id.
INSERT_ATTEMPT = (
    "INSERT INTO {s}.attempts "
    + ATTEMPT_COLUMNS
    + """
VALUES (:delivery_id, :event_id, :endpoint_id, :project_id, :mode, :number, :trigger,
    :started_at, :duration_ms,
    :request_url, CAST(:request_headers AS jsonb), :response_status,
    CAST(:response_headers AS jsonb), :response_body, :error_kind, :error_message,
    CAST(:token AS uuid))
RETURNING id, CASE WHEN CAST(:notify AS boolean)
                   THEN pg_notify(:attempts_channel, CAST(id AS text)) END AS notified
"""
)
# The successes of a batch, settled in one statement (atomic on its own): every 2xx whose
# claim is still current and whose endpoint has no health to restore (not failing, no failure
# counted, breaker closed) moves as `decide` says it does in that case (`SETTLED`); its
# attempt is stored numbered from the row it updated. The endpoint rows are only read, so
# batches never wait on each other there. Rows left out (claim moved on, endpoint to heal or
# announce as recovered) come back absent, and go through `record_attempt`.
SETTLE_SUCCESSES = (
    """
WITH v AS (
    SELECT * FROM unnest(
        CAST(:delivery_ids AS text[]), CAST(:tokens AS uuid[]), CAST(:event_ids AS text[]),
        CAST(:endpoint_ids AS text[]), CAST(:project_ids AS text[]), CAST(:modes AS text[]),
        CAST(:started_ats AS timestamptz[]), CAST(:durations AS integer[]),
        CAST(:request_urls AS text[]), CAST(:request_headers AS jsonb[]),
        CAST(:statuses AS integer[]), CAST(:response_headers AS jsonb[]),
        CAST(:response_bodies AS text[]))
    AS v (delivery_id, token, event_id, endpoint_id, project_id, mode, started_at,
          duration_ms, request_url, request_headers, status, response_headers, response_body)
), d AS (
    UPDATE {s}.deliveries dl
    SET state = :state, attempt_count = dl.attempt_count + 1, next_attempt_at = NULL,
        claim_token = NULL, lease_expires_at = NULL, updated_at = :now, reclaims = 0
    FROM v
    WHERE dl.id = v.delivery_id AND dl.claim_token = v.token AND dl.state = 'delivering'
      AND NOT EXISTS (
          SELECT 1 FROM {s}.endpoints e
          WHERE e.id = dl.endpoint_id
            AND (e.failing_since IS NOT NULL OR e.failures_in_row <> 0
                 OR e.failing_reason IS NOT NULL OR e.consecutive_failures <> 0
                 OR e.breaker_open_until IS NOT NULL))
    RETURNING dl.id, dl.attempt_count
), a AS (
    INSERT INTO {s}.attempts """
    + ATTEMPT_COLUMNS
    + """
    SELECT v.delivery_id, v.event_id, v.endpoint_id, v.project_id, v.mode, d.attempt_count,
        :trigger, v.started_at, v.duration_ms, v.request_url, v.request_headers, v.status,
        v.response_headers, v.response_body, NULL, NULL, v.token
    FROM d JOIN v ON v.delivery_id = d.id
    RETURNING id, CAST(claim_token AS text) AS claim_token, number
)
SELECT a.claim_token, a.number,
    (SELECT CASE WHEN CAST(:notify AS boolean)
                 THEN pg_notify(:attempts_channel, CAST(max(id) AS text)) END FROM a) AS notified
FROM a
"""
)

# -- values ----------------------------------------------------------------------------------


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
class MadeAttempt:
    """An attempt that went out: the job, what came back, when it started, what was sent."""

    job: AttemptJob
    outcome: DeliveryOutcome
    started_at: datetime
    request_headers: dict[str, str]


@dataclass(frozen=True)
class RecordedAttempt:
    """The attempt as stored, and where it left the delivery."""

    number: int
    state: str
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class Locked:
    """The delivery as the recording transaction locked it."""

    attempt_count: int
    failed_attempts: int
    first_attempt_at: datetime | None
    state: str
    next_attempt_at: datetime | None
    owns_claim: bool


class Health(Enum):
    """What the endpoint's health learns from the attempt (`webhooks.health.after_attempt`)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNTOUCHED = "untouched"  # a cancelled delivery's endpoint is gone; an uninterpreted answer


@dataclass(frozen=True)
class Transition:
    """Where one attempt leaves its delivery; `decide` makes it, the writers carry it out.

    ``moves`` false: only the attempt count is written; state, schedule and any live claim
    stay exactly as they are. ``moves`` true: the claim is over (token and lease cleared).
    """

    number: int
    moves: bool
    state: str
    next_attempt_at: datetime | None
    failed_attempts: int
    first_attempt_at: datetime | None
    replay_outcome: str | None
    health: Health
    exhausted: bool


# -- the decision ----------------------------------------------------------------------------


def decide(
    locked: Locked,
    outcome: DeliveryOutcome,
    trigger: Trigger,
    settings: Settings,
    *,
    started_at: datetime,
    now: datetime,
    interpret: bool = True,
    rand: Callable[[], float] = random.random,
) -> Transition:
    """Where an attempt leaves its delivery, given the delivery as locked when recording.

    - A 2xx settles the delivery whoever sent it: the current claim, a replay, or a
      superseded claim whose lease ran out (clearing the token stops the newer claim before
      it sends, if it has not started yet). A ``cancelled`` delivery (its endpoint was
      deleted while the request was on the wire) stays ``cancelled``, even after a 2xx.
    - Any other outcome moves the delivery only under its current scheduled claim: one more
      failed attempt, and the next try as the retry schedule says (`schedule.decide_retry`,
      its window counted from the first attempt's start), or ``failed`` past the window. A
      failed replay never opens a new retry window.

    Args:
        locked: the delivery's row, locked.
        outcome: what the attempt produced.
        trigger: why the attempt was made.
        settings: the retry schedule and window.
        started_at: when the attempt started (the window's origin for a first attempt).
        now: when the attempt ended.
        interpret: read the response beyond its outcome (``Retry-After``, endpoint health).
            False when doing so raised: the attempt is then stored and scheduled plainly.
        rand: the retry jitter's source of uniform numbers in [0, 1).
    """
    number = locked.attempt_count + 1
    cancelled = locked.state == "cancelled"
    health = Health.UNTOUCHED
    if interpret and not cancelled:
        health = Health.SUCCEEDED if outcome.is_success else Health.FAILED
    replay_outcome = None
    if trigger is Trigger.REPLAY:
        replay_outcome = "succeeded" if outcome.is_success else "failed"
    stays = Transition(
        number=number,
        moves=False,
        state=locked.state,
        next_attempt_at=locked.next_attempt_at,
        failed_attempts=locked.failed_attempts,
        first_attempt_at=locked.first_attempt_at,
        replay_outcome=replay_outcome,
        health=health,
        exhausted=False,
    )
    if outcome.is_success and not cancelled:
        return _replace(stays, moves=True, state="succeeded", next_attempt_at=None)
    if cancelled or trigger is not Trigger.SCHEDULED or not locked.owns_claim:
        return stays
    first = locked.first_attempt_at or started_at
    retry_after = None
    if interpret:
        retry_after = parse_retry_after(
            outcome.status, outcome.retry_after, now=now, limit=settings.retry_window
        )
    retry = decide_retry(
        RetryPolicy.from_settings(settings),
        failures=locked.failed_attempts + 1,
        first_attempt_at=first,
        now=now,
        retry_after=retry_after,
        rand=rand,
    )
    state = "failed" if retry.gives_up else "pending"
    return _replace(
        stays,
        moves=True,
        state=state,
        next_attempt_at=retry.next_attempt_at,
        failed_attempts=locked.failed_attempts + 1,
        first_attempt_at=first,
        exhausted=state == "failed" and locked.state != "failed",
    )


def _replace(transition: Transition, **changes: Any) -> Transition:
    return Transition(**{**transition.__dict__, **changes})


# What `SETTLE_SUCCESSES` writes: `decide` for a 2xx under a current scheduled claim (any
# counts; the statement keeps the row's own, adding one attempt). Its health is
# `Health.SUCCEEDED` with nothing to reset, which is why the statement takes only endpoints
# with nothing to reset.
SETTLED_FROM = Locked(
    attempt_count=0,
    failed_attempts=0,
    first_attempt_at=None,
    state="delivering",
    next_attempt_at=None,
    owns_claim=True,
)


def settled(settings: Settings, outcome: DeliveryOutcome, now: datetime) -> Transition:
    """The transition `settle_successes` carries out for a 2xx under a current claim."""
    return decide(SETTLED_FROM, outcome, Trigger.SCHEDULED, settings, started_at=now, now=now)


# -- step 1: begin ---------------------------------------------------------------------------


def renew_below(settings: Settings) -> timedelta:
    """The least lease an attempt starts with: its deadline plus half the rest for recording."""
    return settings.timeout + (settings.lease - settings.timeout) / 2


def begin_attempts(
    conn: Connection, settings: Settings, claims: Sequence[Claim], now: datetime
) -> list[AttemptJob | None]:
    """Read what to send under each claim, renewing leases if need be; None where stale.

    ``conn`` should be in autocommit mode: the dispatcher's lease normally still covers the
    attempt (the message waited milliseconds), so a batch of fresh scheduled claims is one
    read. A message that waited so long that less than `renew_below` remains renews the
    lease to a whole one before anything is sent; replays always renew theirs.
    """
    scheduled = [c for c in claims if c.trigger is Trigger.SCHEDULED]
    rows: dict[tuple[str, str], Any] = {}
    if scheduled:
        read = conn.execute(
            sql(READ_SCHEDULED, settings.db_schema),
            {
                "delivery_ids": [c.delivery_id for c in scheduled],
                "tokens": [c.claim_token for c in scheduled],
            },
        )
        rows = {(row.delivery_id, row.claim_token): row for row in read}
    jobs: list[AttemptJob | None] = []
    for claim in claims:
        row = rows.get((claim.delivery_id, claim.claim_token))
        if claim.trigger is Trigger.SCHEDULED:
            if row is None:
                jobs.append(None)
                continue
            lease_left = row.lease_expires_at - now if row.lease_expires_at else timedelta(0)
            if lease_left >= renew_below(settings):
                jobs.append(_job(claim, row, now, settings))
                continue
        jobs.append(_renew(conn, settings, claim, now))
    return jobs


def begin_attempt(
    conn: Connection, settings: Settings, claim: Claim, now: datetime
) -> AttemptJob | None:
    """`begin_attempts` for one claim."""
    return begin_attempts(conn, settings, [claim], now)[0]


def _renew(conn: Connection, settings: Settings, claim: Claim, now: datetime) -> AttemptJob | None:
    statement = BEGIN_REPLAY if claim.trigger is Trigger.REPLAY else BEGIN_SCHEDULED
    row = conn.execute(
        sql(statement, settings.db_schema),
        {
            "token": claim.claim_token,
            "delivery_id": claim.delivery_id,
            "lease_until": now + settings.lease,
        },
    ).one_or_none()
    if row is None or not getattr(row, "sendable", True):
        return None
    return _job(claim, row, now, settings)


def _job(claim: Claim, row: Any, now: datetime, settings: Settings) -> AttemptJob:
    return AttemptJob(
        claim=claim,
        project_id=row.project_id,
        mode=row.mode,
        payload=row.payload.encode("utf-8"),
        url=row.url,
        secrets=tuple(active_secrets(row.secrets, now, settings.secret_keys)),
    )


# -- step 4: record --------------------------------------------------------------------------


def settles_in_batch(made: MadeAttempt) -> bool:
    """Whether `settle_successes` may carry this attempt (else `record_attempt` does)."""
    return made.outcome.is_success and made.job.claim.trigger is Trigger.SCHEDULED


def settle_successes(
    conn: Connection, settings: Settings, made: Sequence[MadeAttempt], now: datetime
) -> dict[str, RecordedAttempt]:
    """Settle 2xx attempts under current claims of healthy endpoints, in one statement.

    ``conn`` should be in autocommit mode: the statement is its own transaction, and it
    notifies the attempts channel once. Returns, by claim token, the attempts it stored;
    those it left out wrote nothing, and go through `record_attempt`, which handles every
    case (claim moved on, an endpoint's health to restore or its recovery to announce).
    """
    if not made:
        return {}
    transition = settled(settings, made[0].outcome, now)
    rows = [_attempt_values(m) for m in made]
    params = {
        "delivery_ids": [r["delivery_id"] for r in rows],
        "tokens": [r["token"] for r in rows],
        "event_ids": [r["event_id"] for r in rows],
        "endpoint_ids": [r["endpoint_id"] for r in rows],
        "project_ids": [r["project_id"] for r in rows],
        "modes": [r["mode"] for r in rows],
        "started_ats": [r["started_at"] for r in rows],
        "durations": [r["duration_ms"] for r in rows],
        "request_urls": [r["request_url"] for r in rows],
        "request_headers": [r["request_headers"] for r in rows],
        "statuses": [r["response_status"] for r in rows],
        "response_headers": [r["response_headers"] for r in rows],
        "response_bodies": [r["response_body"] for r in rows],
        "state": transition.state,
        "trigger": str(Trigger.SCHEDULED),
        "now": now,
        **_notify(settings),
    }
    stored = conn.execute(sql(SETTLE_SUCCESSES, settings.db_schema), params)
    return {
        row.claim_token: RecordedAttempt(
            number=int(row.number), state=transition.state, next_attempt_at=None
        )
        for row in stored
    }


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
    """Store the attempt and carry out `decide`'s transition, in the caller's transaction.

    Every attempt is stored, even one made under a claim that has since been superseded: the
    request went out. An attempt already stored under this claim (a retry after a lost
    commit acknowledgement) is returned as it is, and nothing is written twice.

    Args:
        interpret: see `decide`; False on the fallback path (`webhooks.attempts`).
    """
    claim = job.claim
    params: dict[str, Any] = {"delivery_id": claim.delivery_id, "token": claim.claim_token}
    row = conn.execute(sql(LOCK_DELIVERY, settings.db_schema), params).one()
    if row.recorded is not None:
        return RecordedAttempt(
            number=row.recorded, state=row.state, next_attempt_at=row.next_attempt_at
        )
    locked = Locked(
        attempt_count=row.attempt_count,
        failed_attempts=row.failed_attempts,
        first_attempt_at=row.first_attempt_at,
        state=row.state,
        next_attempt_at=row.next_attempt_at,
        owns_claim=bool(row.owns_claim),
    )
    transition = decide(
        locked,
        outcome,
        claim.trigger,
        settings,
        started_at=started_at,
        now=now,
        interpret=interpret,
    )
    _carry_out(conn, settings, job, outcome, transition, now)
    conn.execute(
        sql(INSERT_ATTEMPT, settings.db_schema),
        {
            **_attempt_values(MadeAttempt(job, outcome, started_at, request_headers)),
            **_notify(settings),
            "number": transition.number,
            "trigger": str(claim.trigger),
            "error_kind": outcome.error_kind,
            "error_message": outcome.error_message,
        },
    )
    return RecordedAttempt(
        number=transition.number, state=transition.state, next_attempt_at=transition.next_attempt_at
    )


def _carry_out(
    conn: Connection,
    settings: Settings,
    job: AttemptJob,
    outcome: DeliveryOutcome,
    transition: Transition,
    now: datetime,
) -> None:
    claim = job.claim
    schema = settings.db_schema
    if transition.moves:
        conn.execute(
            sql(MOVE_DELIVERY, schema),
            {
                "delivery_id": claim.delivery_id,
                "number": transition.number,
                "failed_attempts": transition.failed_attempts,
                "first_attempt_at": transition.first_attempt_at,
                "state": transition.state,
                "next_attempt_at": transition.next_attempt_at,
                "now": now,
            },
        )
    else:
        conn.execute(
            sql(COUNT_ATTEMPT, schema),
            {"delivery_id": claim.delivery_id, "number": transition.number, "now": now},
        )
    if transition.replay_outcome is not None:
        conn.execute(
            sql(FINISH_REPLAY, schema),
            {"token": claim.claim_token, "outcome": transition.replay_outcome},
        )
    if transition.health is Health.UNTOUCHED:
        return
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
            "attempts": transition.number,
            "last_status": outcome.status,
            "last_error_kind": outcome.error_kind,
        },
        status=outcome.status,
        error_kind=outcome.error_kind,
        error_message=outcome.error_message,
        succeeded=transition.health is Health.SUCCEEDED,
        exhausted=transition.exhausted,
        now=now,
    )


def _notify(settings: Settings) -> dict[str, Any]:
    return {"notify": settings.notify, "attempts_channel": attempts_channel(settings.db_schema)}


def _attempt_values(made: MadeAttempt) -> dict[str, Any]:
    claim = made.job.claim
    outcome = made.outcome
    return {
        "delivery_id": claim.delivery_id,
        "event_id": claim.event_id,
        "endpoint_id": claim.endpoint_id,
        "token": claim.claim_token,
        "project_id": made.job.project_id,
        "mode": made.job.mode,
        "started_at": made.started_at,
        "duration_ms": round(outcome.duration.total_seconds() * 1000),
        "request_url": made.job.url,
        "request_headers": json.dumps(made.request_headers),
        "response_status": outcome.status,
        "response_headers": json.dumps(outcome.response_headers),
        "response_body": outcome.response_body,
    }
