"""Attempts, start to finish: prove the claims, sign, POST, record.

This is the whole job of a worker, kept out of Celery so it can be tested and reused (the
Celery task in `workers.tasks` only calls `run_attempts`). A task carries one attempt or a
batch (`webhooks.messages`). A batch's attempts run at once, each on a thread of the
worker's attempt pool with its own deadline, and each is recorded as soon as it ends: the
recorder takes whatever has finished by the time it is free, settles the successes in one
statement and records the rest one by one (`webhooks.recording`). So one black-holed
endpoint in a batch delays no other attempt in it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from webhooks import __version__, clock
from webhooks.database import is_connection_error
from webhooks.delivery import DeliveryOutcome, Sender
from webhooks.messages import Claim
from webhooks.metrics import observe_attempt
from webhooks.models import rfc3339
from webhooks.recording import (
    AttemptJob,
    MadeAttempt,
    RecordedAttempt,
    begin_attempts,
    record_attempt,
    settle_successes,
    settles_in_batch,
)
from webhooks.settings import Settings
from webhooks.signing import signature_header

log = logging.getLogger("webhooks.attempts")

USER_AGENT = f"CloudAPI-Webhooks/{__version__}"
# A result that cannot be written (Postgres restarting) is retried with these pauses (the
# last repeats) for as long as the claim's lease lasts: the request went out, so its attempt
# must be stored. Past the lease the delivery is attempted again rather than lost.
RECORD_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)

T = TypeVar("T")


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

    def brief(self) -> str:
        """This attempt in a batch's result: status or error kind, and duration (short, so a
        batch of 50 stays within Celery's ``resultrepr_maxsize``)."""
        if self.skipped:
            return "skipped"
        said = self.error_kind or str(self.status)
        return f"{said} {self.duration_ms}ms"


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


def run_attempt(engine: Engine, sender: Sender, settings: Settings, claim: Claim) -> AttemptReport:
    """`run_attempts` for one claim."""
    return run_attempts(engine, sender, settings, [claim])[0]


def run_attempts(
    engine: Engine,
    sender: Sender,
    settings: Settings,
    claims: Sequence[Claim],
    pool: Executor | None = None,
) -> list[AttemptReport]:
    """Make the attempts the claims stand for, except stale ones, and record each.

    Args:
        pool: runs a batch's attempts at once; without it (or for one attempt) they run
            one after another on the calling thread.

    Returns one report per claim, in the claims' order.
    """
    autocommit = _autocommit(engine)
    jobs = _retry_once(lambda: _begin(autocommit, settings, claims))
    reports: dict[int, AttemptReport] = {}
    live: list[tuple[int, AttemptJob]] = []
    for i, (claim, job) in enumerate(zip(claims, jobs, strict=True)):
        if job is None:
            reports[i] = _skipped(claim)
        else:
            live.append((i, job))
    if pool is None or len(live) <= 1:
        for i, job in live:
            made = make_attempt(sender, settings, job)
            reports.update(_record(engine, autocommit, settings, [(i, made)]))
    else:
        started: dict[Future[MadeAttempt], int] = {
            pool.submit(make_attempt, sender, settings, job): i for i, job in live
        }
        pending: set[Future[MadeAttempt]] = set(started)
        crashed: list[BaseException] = []
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            finished = []
            for future in done:
                error = future.exception()
                if error is None:
                    finished.append((started[future], future.result()))
                else:
                    crashed.append(error)
            reports.update(_record(engine, autocommit, settings, finished))
        if crashed:
            # The others are recorded; the task fails as a single attempt's would, and the
            # crashed attempt's lease brings its delivery back.
            raise crashed[0]
    return [reports[i] for i in range(len(claims))]


@functools.lru_cache(maxsize=8)
def _autocommit(engine: Engine) -> Engine:
    # The same pool; its connections run each statement as its own transaction (no BEGIN
    # and COMMIT round trips around the one-statement read and settle).
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _begin(engine: Engine, settings: Settings, claims: Sequence[Claim]) -> list[AttemptJob | None]:
    with engine.connect() as conn:
        return begin_attempts(conn, settings, claims, clock.now())


def _retry_once(action: Callable[[], T]) -> T:
    # Pooled connections are not pinged before use (a round trip per checkout); one that
    # died with a Postgres restart fails here once, which invalidates the pool's older
    # connections, and the action is made again on a new one.
    for tries in range(2):
        try:
            return action()
        except DBAPIError as exc:
            if tries or not is_connection_error(exc):
                raise
    raise AssertionError("unreachable")


def _skipped(claim: Claim) -> AttemptReport:
    log.info(
        "attempt.skipped", extra={"delivery_id": claim.delivery_id, "claim": claim.claim_token}
    )
    observe_attempt(state=None, error_kind=None, trigger=claim.trigger, seconds=None)
    return AttemptReport(delivery_id=claim.delivery_id, attempt=None, skipped=True)


def make_attempt(sender: Sender, settings: Settings, job: AttemptJob) -> MadeAttempt:
    """Sign and send one attempt (or refuse it: plain http while not allowed)."""
    started_at = clock.now()
    headers = request_headers(job, int(started_at.timestamp()))
    outcome = refuse_plain_http(job.url, settings) or sender.send(job.url, headers, job.payload)
    return MadeAttempt(job, outcome, started_at, headers)


def _record(
    engine: Engine,
    autocommit: Engine,
    settings: Settings,
    finished: Sequence[tuple[int, MadeAttempt]],
) -> dict[int, AttemptReport]:
    """Store attempts that went out: they are stored whatever happens next."""
    batchable = [(i, made) for i, made in finished if settles_in_batch(made)]
    settled: dict[str, RecordedAttempt] = {}
    if batchable:
        settled = _settle(autocommit, settings, [made for _, made in batchable])
    reports: dict[int, AttemptReport] = {}
    for i, made in finished:
        recorded = settled.get(made.job.claim.claim_token)
        if recorded is None:
            made, recorded = _record_one(engine, settings, made)
        reports[i] = _report(made, recorded)
    return reports


def _settle(
    autocommit: Engine, settings: Settings, made: Sequence[MadeAttempt]
) -> dict[str, RecordedAttempt]:
    def settle() -> dict[str, RecordedAttempt]:
        with autocommit.connect() as conn:
            return settle_successes(conn, settings, made, clock.now())

    try:
        return _with_retries(settings, made[0].job, settle)
    except DBAPIError as exc:
        if _is_database_down(exc):
            raise  # tried for a whole lease; the deliveries are claimed again when it ends
        # Anything else (a deadlock with another writer of the same rows): nothing was
        # written; the locked path records each on its own.
        log.warning("attempt.batch_settle_failed", extra={"error": _first_line(exc)})
        return {}


def _record_one(
    engine: Engine, settings: Settings, made: MadeAttempt
) -> tuple[MadeAttempt, RecordedAttempt]:
    try:
        return made, _locked(engine, settings, made, interpret=True)
    except Exception as exc:
        if _is_database_down(exc):
            raise  # tried for a whole lease; the delivery is claimed again when it ends
        claim = made.job.claim
        log.exception(
            "attempt.uninterpretable",
            extra={"delivery_id": claim.delivery_id, "attempt": claim.attempt},
        )
        made = MadeAttempt(
            made.job, uninterpreted(made.outcome, exc), made.started_at, made.request_headers
        )
        return made, _locked(engine, settings, made, interpret=False)


def _locked(
    engine: Engine, settings: Settings, made: MadeAttempt, *, interpret: bool
) -> RecordedAttempt:
    def record() -> RecordedAttempt:
        with engine.begin() as conn:
            return record_attempt(
                conn,
                settings,
                made.job,
                outcome=made.outcome,
                started_at=made.started_at,
                request_headers=made.request_headers,
                now=clock.now(),
                interpret=interpret,
            )

    return _with_retries(settings, made.job, record)


def _report(made: MadeAttempt, recorded: RecordedAttempt) -> AttemptReport:
    claim, outcome = made.job.claim, made.outcome
    duration_ms = round(outcome.duration.total_seconds() * 1000)
    observe_attempt(
        state=recorded.state,
        error_kind=outcome.error_kind,
        trigger=claim.trigger,
        seconds=outcome.duration.total_seconds(),
        mode=made.job.mode,
    )
    log.info(
        "attempt.recorded",
        extra={
            "delivery_id": claim.delivery_id,
            "event_id": claim.event_id,
            "endpoint_id": claim.endpoint_id,
            "mode": made.job.mode,
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
    return isinstance(exc, DBAPIError) and is_connection_error(exc)


def _with_retries(settings: Settings, job: AttemptJob, write: Callable[[], T]) -> T:
    """``write``, tried again while the database is unreachable, for as long as a lease."""
    give_up_at = time.monotonic() + settings.lease.total_seconds()
    for tries in itertools.count():
        try:
            return write()
        except DBAPIError as exc:
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
