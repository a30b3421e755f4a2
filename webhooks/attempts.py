"""One attempt, start to finish: prove the claim, sign, POST, record.

This is the whole job of a worker, kept out of Celery so it can be tested and reused (the
Celery task in `workers.tasks` only calls `run_attempt`).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from webhooks import __version__, clock
from webhooks.claims import (
    AttemptJob,
    Claim,
    RecordedAttempt,
    begin_attempt,
    record_attempt,
    record_success,
)
from webhooks.database import driver_connection, is_connection_error
from webhooks.delivery import DeliveryOutcome, HttpSender
from webhooks.metrics import observe_attempt
from webhooks.models import rfc3339
from webhooks.settings import Settings
from webhooks.signing import signature_header

log = logging.getLogger("webhooks.attempts")

USER_AGENT = f"CloudAPI-Webhooks/{__version__}"
# A result that cannot be written (Postgres restarting) is retried with these pauses (the
# last repeats) for as long as the claim's lease lasts: the request went out, so its attempt
# must be stored. Past the lease the delivery is attempted again rather than lost.
RECORD_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class AttemptReport:
    """What one run of the task did, as shown in Flower (no payload, no secret)."""

    delivery_id: str
    attempt: int | None
    skipped: bool = False
    status: int | None = None
    error_kind: str | None = None
    duration_ms: int | None = None
    state: str | None = None
    next_attempt_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The task result Flower displays."""
        if self.skipped:
            return {"delivery_id": self.delivery_id, "skipped": "claim superseded or done"}
        return {
            "delivery_id": self.delivery_id,
            "attempt": self.attempt,
            "status": self.status,
            "error_kind": self.error_kind,
            "duration_ms": self.duration_ms,
            "state": self.state,
            "next_attempt_at": rfc3339(self.next_attempt_at),
        }


def webhook_headers(*, msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    """The headers of every request we send a receiver (attempts and receiver checks).

    Args:
        msg_id: the ``webhook-id``: the event id.
        timestamp: the ``webhook-timestamp``, unix seconds.
        signature: the ``webhook-signature`` value (`webhooks.signing.signature_header`).
    """
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def request_headers(job: AttemptJob, timestamp: int) -> dict[str, str]:
    """The headers of one attempt: a fresh timestamp and signature, the same ``webhook-id``."""
    event_id = job.claim.event_id
    return webhook_headers(
        msg_id=event_id,
        timestamp=timestamp,
        signature=signature_header(
            job.secrets, msg_id=event_id, timestamp=timestamp, body=job.payload
        ),
    )


def run_attempt(
    engine: Engine, sender: HttpSender, settings: Settings, claim: Claim
) -> AttemptReport:
    """Make the attempt a claim stands for, unless the claim is stale, and record it."""
    job = _begin(engine, settings, claim)
    if job is None:
        log.info(
            "attempt.skipped",
            extra={"delivery_id": claim.delivery_id, "claim": claim.claim_token},
        )
        observe_attempt(state=None, error_kind=None, trigger=claim.trigger, seconds=None)
        return AttemptReport(delivery_id=claim.delivery_id, attempt=None, skipped=True)
    started_at = clock.now()
    headers = request_headers(job, int(started_at.timestamp()))
    outcome = refuse_plain_http(job.url, settings) or sender.send(job.url, headers, job.payload)
    # From here on the request went out: its attempt is stored whatever happens next.
    try:
        recorded = _record_with_retries(engine, settings, job, outcome, started_at, headers)
    except Exception as exc:
        if _is_database_down(exc):
            raise  # tried for a whole lease; the delivery is claimed again when it ends
        log.exception(
            "attempt.uninterpretable",
            extra={"delivery_id": claim.delivery_id, "attempt": claim.attempt},
        )
        outcome = uninterpreted(outcome, exc)
        recorded = _record_with_retries(
            engine, settings, job, outcome, started_at, headers, interpret=False
        )
    duration_ms = round(outcome.duration.total_seconds() * 1000)
    observe_attempt(
        state=recorded.state,
        error_kind=outcome.error_kind,
        trigger=claim.trigger,
        seconds=outcome.duration.total_seconds(),
        mode=job.mode,
    )
    log.info(
        "attempt.recorded",
        extra={
            "delivery_id": claim.delivery_id,
            "event_id": claim.event_id,
            "endpoint_id": claim.endpoint_id,
            "mode": job.mode,
            "attempt": recorded.number,
            "trigger": claim.trigger,
            "status": outcome.status,
            "error_kind": outcome.error_kind,
            "duration_ms": duration_ms,
            "state": recorded.state,
        },
    )
    return AttemptReport(
        delivery_id=claim.delivery_id,
        attempt=recorded.number,
        status=outcome.status,
        error_kind=outcome.error_kind,
        duration_ms=duration_ms,
        state=recorded.state,
        next_attempt_at=recorded.next_attempt_at,
    )


def _begin(engine: Engine, settings: Settings, claim: Claim) -> AttemptJob | None:
    # Autocommit: the common case is one read, and a transaction around it would cost two
    # more round trips. Pooled connections are not pinged before use (a round trip per
    # checkout); one that died with a Postgres restart fails here once, which invalidates
    # the pool's older connections, and the read is made again on a new one.
    for tries in range(2):
        try:
            with driver_connection(engine) as conn:
                return begin_attempt(conn, settings, claim, clock.now())
        except psycopg.OperationalError:
            if tries:
                raise
    raise AssertionError("unreachable")


def refuse_plain_http(url: str, settings: Settings) -> DeliveryOutcome | None:
    """A `blocked` outcome for an ``http://`` URL while `WEBHOOKS_ALLOW_HTTP` is off.

    The URL was checked when the endpoint was created, perhaps while plain HTTP was allowed;
    the setting in force now decides, and nothing is sent.
    """
    if settings.allow_http or not url.lower().startswith("http://"):
        return None
    return DeliveryOutcome(
        status=None,
        error_kind="blocked",
        error_message=(
            "plain http:// endpoints are not allowed (WEBHOOKS_ALLOW_HTTP is off); "
            "change the endpoint's URL to https://"
        ),
        duration=timedelta(0),
    )


# Longest exception text kept in the message of an attempt that could not be interpreted.
_MAX_REASON_CHARS = 500


def uninterpreted(outcome: DeliveryOutcome, exc: Exception) -> DeliveryOutcome:
    """The outcome to store when reading a response raised ``exc``: error kind `other`.

    The status, headers and body are kept as received, made safe to store (no NUL, no lone
    surrogate), so the attempt is visible as it happened; the next try follows the plain
    schedule.
    """
    reason = f"{type(exc).__name__}: {exc}"[:_MAX_REASON_CHARS]
    return DeliveryOutcome(
        status=outcome.status,
        error_kind="other",
        error_message=(
            f"the attempt was made but its response could not be interpreted ({reason}); "
            "the next attempt follows the normal retry schedule"
        ),
        duration=outcome.duration,
        response_headers={
            _storable(key): _storable(value) for key, value in outcome.response_headers.items()
        },
        response_body=None if outcome.response_body is None else _storable(outcome.response_body),
    )


def _storable(text: str) -> str:
    return text.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "")


def _is_database_down(exc: Exception) -> bool:
    return isinstance(exc, DBAPIError | psycopg.OperationalError) and is_connection_error(exc)


def _record(
    engine: Engine,
    settings: Settings,
    job: AttemptJob,
    outcome: DeliveryOutcome,
    started_at: datetime,
    headers: dict[str, str],
    interpret: bool = True,
) -> RecordedAttempt:
    """One try at storing the attempt: the one-statement success, else the locked path."""
    fields: dict[str, Any] = {
        "outcome": outcome,
        "started_at": started_at,
        "request_headers": headers,
    }
    if outcome.is_success and job.claim.trigger == "scheduled":
        with driver_connection(engine) as conn:
            recorded = record_success(conn, settings, job, now=clock.now(), **fields)
        if recorded is not None:
            return recorded
    with engine.begin() as conn:
        return record_attempt(conn, settings, job, now=clock.now(), interpret=interpret, **fields)


def _record_with_retries(
    engine: Engine,
    settings: Settings,
    job: AttemptJob,
    outcome: DeliveryOutcome,
    started_at: datetime,
    headers: dict[str, str],
    interpret: bool = True,
) -> RecordedAttempt:
    give_up_at = time.monotonic() + settings.lease.total_seconds()
    for tries in itertools.count():
        try:
            return _record(engine, settings, job, outcome, started_at, headers, interpret)
        except (DBAPIError, psycopg.OperationalError) as exc:
            # "Connection refused" and "the database system is shutting down" come from a
            # reconnect, with no connection to invalidate: is_connection_error knows them.
            delay = RECORD_RETRY_DELAYS[min(tries, len(RECORD_RETRY_DELAYS) - 1)]
            if not is_connection_error(exc) or time.monotonic() + delay > give_up_at:
                raise
            log.warning(
                "attempt.record_retry",
                extra={"delivery_id": job.claim.delivery_id, "error": _first_line(exc)},
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _first_line(exc: Exception) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return str(cause).strip().splitlines()[0] if cause else ""
