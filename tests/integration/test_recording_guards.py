"""An attempt that was made is always recorded, once; nothing a delivery waits on can hold it
past its window or forever. Against a real Postgres, a real receiver, and (where a process
must do it) the real dispatcher and worker."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import cli_ok, run_cli
from tests.support.deliveries import (
    attempts,
    claim_now,
    deliveries,
    execute_sql,
    new_endpoint,
    publish_expanded,
    wait_for_state,
)
from tests.support.polling import wait_for
from tests.support.processes import BIN, Stack
from tests.support.receivers import Receiver
from webhooks import clock
from webhooks.attempts import run_attempt
from webhooks.claiming import claim_due, reap_expired_leases, release_held
from webhooks.database import sql
from webhooks.delivery import HttpSender
from webhooks.endpoints import disable_endpoint, set_rate_limit
from webhooks.recording import begin_attempt, record_attempt
from webhooks.settings import Settings


def _delivery_row(engine: Engine, settings: Settings, event_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sql("SELECT * FROM {s}.deliveries WHERE event_id = :e", settings.db_schema),
            {"e": event_id},
        ).one()


def test_an_attempt_whose_response_cannot_be_interpreted_is_stored_and_scheduled(
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver.script(path, [503])
    receiver.reply_headers(path, {"Retry-After": "30"})
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_expanded(engine, settings, project)
    claim = claim_now(engine, settings, event_id)

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("interpreting exploded")

    monkeypatch.setattr("webhooks.recording.parse_retry_after", explode)
    with HttpSender(timeout=settings.timeout, allowed_networks=settings.allowed_networks) as sender:
        report = run_attempt(engine, sender, settings, claim)
        again = run_attempt(engine, sender, settings, claim)  # the same message, redelivered

    [attempt] = attempts(engine, settings, event_id)
    assert attempt.response_status == 503
    assert attempt.error_kind == "other"
    assert "interpreting exploded" in (attempt.error_message or "")
    assert len(receiver.received(path)) == 1  # nothing sent twice
    assert again.skipped
    [delivery] = deliveries(engine, settings, event_id)
    assert delivery.state == "pending"  # the plain schedule (1s), not the receiver's 30 s
    assert report.next_attempt_at is not None
    assert report.next_attempt_at - attempt.started_at < timedelta(seconds=5)


def test_a_result_written_twice_under_one_claim_is_stored_once(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    receiver.script(path, [500])
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_expanded(engine, settings, project)
    claim = claim_now(engine, settings, event_id)
    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, clock.now())
    assert job is not None
    with HttpSender(timeout=settings.timeout, allowed_networks=settings.allowed_networks) as sender:
        outcome = sender.send(job.url, {}, job.payload)
    fields: dict[str, Any] = {"outcome": outcome, "started_at": clock.now(), "request_headers": {}}

    # The first commit's acknowledgement is lost; the worker writes the same result again.
    with engine.begin() as conn:
        first = record_attempt(conn, settings, job, now=clock.now(), **fields)
    with engine.begin() as conn:
        second = record_attempt(conn, settings, job, now=clock.now(), **fields)

    assert second == first
    assert [a.number for a in attempts(engine, settings, event_id)] == [1]
    assert _delivery_row(engine, settings, event_id).attempt_count == 1


def test_an_http_endpoint_is_not_sent_to_once_plain_http_is_turned_off(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)  # created while allowed
    event_id = publish_expanded(engine, settings, project)
    claim = claim_now(engine, settings, event_id)
    strict = dataclasses.replace(settings, allow_http=False)

    with HttpSender(timeout=settings.timeout, allowed_networks=settings.allowed_networks) as sender:
        run_attempt(engine, sender, strict, claim)

    [attempt] = attempts(engine, settings, event_id)
    assert attempt.error_kind == "blocked"
    assert "WEBHOOKS_ALLOW_HTTP" in (attempt.error_message or "")
    assert receiver.received(path) == []


def test_reclaims_without_an_attempt_are_counted_until_one_is_recorded(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_expanded(engine, settings, project)
    for expected in (1, 2):
        claim = claim_now(engine, settings, event_id)  # its message is lost: nothing is sent
        execute_sql(
            engine,
            settings,
            "UPDATE {s}.deliveries SET lease_expires_at = :past WHERE id = :id",
            past=clock.now() - timedelta(seconds=1),
            id=claim.delivery_id,
        )
        with engine.begin() as conn:
            reaped = reap_expired_leases(conn, settings, clock.now())
        assert [(r.delivery_id, r.reclaims) for r in reaped.deliveries] == [
            (claim.delivery_id, expected)
        ]
    stats = cli_ok(env, "stats", "--json")
    assert stats["reclaimed_without_attempt"] == {
        "deliveries": 1,
        "most_reclaims": 2,
        "delivery_id": claim.delivery_id,
    }
    assert attempts(engine, settings, event_id) == []  # no attempt invented

    with HttpSender(timeout=settings.timeout, allowed_networks=settings.allowed_networks) as sender:
        run_attempt(engine, sender, settings, claim_now(engine, settings, event_id))
    assert _delivery_row(engine, settings, event_id).reclaims == 0


def test_a_held_row_of_an_enabled_endpoint_is_released_by_the_periodic_pass(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url(path), project)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id)
    event_id = publish_expanded(engine, settings, project)  # held: the endpoint is disabled
    # The enable commits first and cannot see the held row (the race): it is enabled behind
    # the release's back.
    execute_sql(
        engine, settings, "UPDATE {s}.endpoints SET enabled = true WHERE id = :id", id=endpoint_id
    )
    assert _delivery_row(engine, settings, event_id).next_attempt_at is None

    with engine.begin() as conn:
        released = release_held(conn, settings, clock.now())

    assert released >= 1
    assert _delivery_row(engine, settings, event_id).next_attempt_at is not None


def test_a_delivery_deferred_past_its_window_fails_instead_of_waiting(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_expanded(engine, settings, project)
    with engine.begin() as conn:
        set_rate_limit(conn, settings, endpoint_id, 1)
    # The first attempt was made long ago: the window is still open 2 s, but the rate limit's
    # next slot lies past it. One instant throughout, or a slow machine would close the window
    # by itself and the test would pass without the deferral being judged.
    now = clock.now()
    execute_sql(
        engine,
        settings,
        "UPDATE {s}.deliveries SET first_attempt_at = :first, attempt_count = 1, "
        "failed_attempts = 1 WHERE event_id = :e",
        first=now - settings.retry_window + timedelta(seconds=2),
        e=event_id,
    )
    execute_sql(
        engine,
        settings,
        "UPDATE {s}.endpoints SET next_send_at = :slot WHERE id = :id",
        slot=now + timedelta(seconds=30),
        id=endpoint_id,
    )

    with engine.begin() as conn:
        batch = claim_due(conn, settings, now, 100)

    assert batch.claims == [] or all(c.event_id != event_id for c in batch.claims)
    [delivery] = deliveries(engine, settings, event_id)
    assert delivery.state == "failed"
    assert receiver.received(path) == []


# Through the real processes.


def test_the_dispatcher_releases_a_held_row_the_enable_did_not_see(
    engine: Engine, settings: Settings, receiver: Receiver, stack: Stack, project: str, path: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url(path), project)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id)
    event_id = publish_expanded(engine, settings, project)
    execute_sql(
        engine, settings, "UPDATE {s}.endpoints SET enabled = true WHERE id = :id", id=endpoint_id
    )

    wait_for_state(engine, settings, event_id, "succeeded", timeout=10)
    assert len(receiver.received(path)) == 1


def test_the_dispatcher_names_a_delivery_reclaimed_without_an_attempt(
    engine: Engine, settings: Settings, receiver: Receiver, stack: Stack, project: str, path: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url(path), project)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id)  # held, so the dispatcher leaves it
    event_id = publish_expanded(engine, settings, project)
    # As if it had been claimed and its broker message lost: a lease that ran out, no attempt.
    with engine.begin() as conn:
        delivery_id = conn.execute(
            sql(
                "UPDATE {s}.deliveries SET state = 'delivering', claim_token = gen_random_uuid(), "
                "lease_expires_at = :past, next_attempt_at = :past WHERE event_id = :e "
                "RETURNING id",
                settings.db_schema,
            ),
            {"past": clock.now() - timedelta(seconds=1), "e": event_id},
        ).scalar_one()
        conn.execute(
            sql("UPDATE {s}.endpoints SET enabled = true WHERE id = :id", settings.db_schema),
            {"id": endpoint_id},
        )

    wait_for_state(engine, settings, event_id, "succeeded", timeout=15)
    warnings = wait_for(
        lambda: [
            line
            for line in stack.logs(tail=None).splitlines()
            if "delivery.reclaimed_without_attempt" in line
        ],
        timeout=5,
        what="the reclaim warning",
    )
    assert any(delivery_id in line for line in warnings)
    assert len(receiver.received(path)) == 1


def test_invalid_settings_are_refused_at_start_up_with_one_line(env: dict[str, str]) -> None:
    result = run_cli({**env, "WEBHOOKS_TIMEOUT": "0s"}, "stats")

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "WEBHOOKS_TIMEOUT" in line


def test_a_worker_with_invalid_settings_refuses_to_start_with_one_line(
    env: dict[str, str],
) -> None:
    result = subprocess.run(
        [str(BIN / "celery"), "-A", "workers", "worker", "-P", "threads"],
        env={**os.environ, **env, "WEBHOOKS_LEASE": "-5s"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "WEBHOOKS_LEASE" in errors[0], result.stderr
