"""The worker's hot path against a real Postgres and a real receiver: a fresh claim is read
without a write, a short lease is renewed before anything is sent, the 2xx of a healthy
endpoint are settled in one statement, a 2xx that has health to restore closes the endpoint's
breaker on the locked path, and a claim that moved on meanwhile falls back to the locked path
without losing the attempt."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.deliveries import (
    attempts,
    claim_now,
    deliveries,
    new_endpoint,
    publish_expanded,
)
from tests.support.receivers import Receiver
from webhooks import clock
from webhooks.attempts import run_attempt
from webhooks.delivery import DeliveryOutcome, HttpSender
from webhooks.messages import Claim
from webhooks.recording import (
    AttemptJob,
    MadeAttempt,
    begin_attempt,
    renew_below,
    settle_successes,
)
from webhooks.settings import Settings


def _claim_one(engine: Engine, settings: Settings, url: str, project: str) -> tuple[str, Claim]:
    new_endpoint(engine, settings, url, project)
    event_id = publish_expanded(engine, settings, project)
    return event_id, claim_now(engine, settings, event_id)


def _row(engine: Engine, settings: Settings, delivery_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT xmin::text AS version, lease_expires_at, state, claim_token "
                f'FROM "{settings.db_schema}".deliveries WHERE id = :id'
            ),
            {"id": delivery_id},
        ).one()


def _set(engine: Engine, settings: Settings, table: str, row_id: str, **values: Any) -> None:
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f'UPDATE "{settings.db_schema}".{table} SET {assignments} WHERE id = :id'),
            {**values, "id": row_id},
        )


def test_a_fresh_claim_is_read_without_a_write(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    _, claim = _claim_one(engine, settings, receiver.url("/fresh"), project)
    before = _row(engine, settings, claim.delivery_id)

    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, clock.now())

    assert job is not None
    assert job.payload.startswith(b'{"id":"evt_')
    after = _row(engine, settings, claim.delivery_id)
    assert after.version == before.version  # no new row version: nothing was written
    assert after.lease_expires_at == before.lease_expires_at


def test_a_claim_that_waited_long_in_the_queue_renews_its_lease_first(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    _, claim = _claim_one(engine, settings, receiver.url("/waited"), project)
    now = clock.now()
    # As if the message had sat in the broker for most of the lease.
    short = now + renew_below(settings) - timedelta(seconds=1)
    _set(engine, settings, "deliveries", claim.delivery_id, lease_expires_at=short)

    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, now)

    assert job is not None
    assert _row(engine, settings, claim.delivery_id).lease_expires_at == now + settings.lease


def test_a_stale_claim_is_not_attempted(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    _, claim = _claim_one(engine, settings, receiver.url("/stale"), project)
    other = Claim(**{**claim.__dict__, "claim_token": "00000000-0000-0000-0000-000000000000"})

    with engine.begin() as conn:
        assert begin_attempt(conn, settings, other, clock.now()) is None


def _success(job: AttemptJob, now: Any, event_id: str) -> MadeAttempt:
    outcome = DeliveryOutcome(
        status=200, error_kind=None, error_message=None, duration=timedelta(milliseconds=7)
    )
    return MadeAttempt(job, outcome, now, {"webhook-id": event_id})


def test_the_successes_of_a_batch_settle_in_one_statement_once(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    # Two projects, one endpoint each: each event has one delivery.
    claimed = [
        _claim_one(engine, settings, receiver.url("/ok"), f"{project}_{i}") for i in range(2)
    ]
    now = clock.now()
    made = []
    with engine.begin() as conn:
        for event_id, claim in claimed:
            job = begin_attempt(conn, settings, claim, now)
            assert job is not None
            made.append(_success(job, now, event_id))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        recorded = settle_successes(conn, settings, made, now)
        # The claims are spent: a second try (a retried message) writes nothing.
        again = settle_successes(conn, settings, made, now)

    assert {token: (r.number, r.state) for token, r in recorded.items()} == {
        claim.claim_token: (1, "succeeded") for _, claim in claimed
    }
    assert again == {}
    for event_id, _ in claimed:
        [delivery] = deliveries(engine, settings, event_id)
        assert (delivery.state, delivery.attempt_count) == ("succeeded", 1)
        assert [
            (a.number, a.response_status, a.trigger, a.duration_ms) for a in delivery.attempts
        ] == [(1, 200, "scheduled", 7)]


@pytest.mark.parametrize(
    "health",
    [
        {"failing_since": "now", "failures_in_row": 5},
        {
            "consecutive_failures": 3,
            "breaker_open_until": "past",
            "failures_in_row": 3,
            "failing_reason": "timeout",
        },
    ],
    ids=["failing", "breaker"],
)
def test_a_success_with_endpoint_health_to_restore_takes_the_locked_path(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, health: dict[str, Any]
) -> None:
    event_id, claim = _claim_one(engine, settings, receiver.url("/heal"), project)
    now = clock.now()
    when = {"now": now, "past": now - timedelta(seconds=1)}
    _set(
        engine,
        settings,
        "endpoints",
        claim.endpoint_id,
        **{column: when.get(value, value) for column, value in health.items()},
    )
    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, now)
    assert job is not None
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert settle_successes(conn, settings, [_success(job, now, event_id)], now) == {}
    assert deliveries(engine, settings, event_id)[0].attempt_count == 0  # nothing written

    with HttpSender(allowed_networks=settings.allowed_networks) as sender:
        report = run_attempt(engine, sender, settings, claim)

    assert (report.status, report.state, report.attempt) == (200, "succeeded", 1)
    with engine.connect() as conn:
        endpoint = conn.execute(
            sa.text(
                "SELECT consecutive_failures, breaker_open_until, failures_in_row, "
                f'failing_reason, failing_since FROM "{settings.db_schema}".endpoints '
                "WHERE id = :id"
            ),
            {"id": claim.endpoint_id},
        ).one()
    assert tuple(endpoint) == (0, None, 0, None, None)


class SupersedingSender:
    """The real sender, but the claim is superseded while the request is out (as when a
    lease ran out mid-request and another dispatcher claimed the row)."""

    def __init__(self, sender: HttpSender, supersede: Any) -> None:
        self._sender = sender
        self._supersede = supersede

    def send(self, url: str, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        outcome = self._sender.send(url, headers, body)
        self._supersede()
        return outcome


def test_a_success_under_a_superseded_claim_is_still_stored(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    event_id, claim = _claim_one(engine, settings, receiver.url("/superseded"), project)

    def supersede() -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f'UPDATE "{settings.db_schema}".deliveries '
                    "SET claim_token = gen_random_uuid() WHERE id = :id"
                ),
                {"id": claim.delivery_id},
            )

    with HttpSender(allowed_networks=settings.allowed_networks) as http:
        sender: Any = SupersedingSender(http, supersede)
        report = run_attempt(engine, sender, settings, claim)

    assert (report.status, report.state, report.attempt) == (200, "succeeded", 1)
    assert len(receiver.received("/superseded")) == 1
    assert [(a.number, a.response_status) for a in attempts(engine, settings, event_id)] == [
        (1, 200)
    ]
    row = _row(engine, settings, claim.delivery_id)
    # A 2xx settles the delivery whoever sent it, and stops the newer claim before it sends.
    assert (row.state, row.claim_token) == ("succeeded", None)


@pytest.fixture(autouse=True)
def _no_other_due_rows(no_other_due_rows: None) -> None:
    """claim_due takes the oldest due rows of the whole schema: start each test without any."""
