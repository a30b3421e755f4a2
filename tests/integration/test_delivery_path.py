"""The delivery path end to end: publish → dispatcher → Celery worker → receiver → attempt.

Real Postgres, real broker, a real worker and dispatcher as subprocesses (as the Procfile
starts them), a real receiver on 127.0.0.1. The retry schedule is shortened to 1s,2s.
"""

from __future__ import annotations

import itertools
import json

import pytest
import sqlalchemy as sa
import standardwebhooks
from sqlalchemy.engine import Engine

from tests.support.deliveries import (
    attempts,
    count_rows,
    deliveries,
    new_endpoint,
    publish_one,
    wait_for_state,
)
from tests.support.polling import wait_for
from tests.support.processes import settle
from tests.support.receivers import Receiver
from webhooks.endpoints import disable_endpoint, enable_endpoint
from webhooks.errors import EventNotFound
from webhooks.outbox import publish
from webhooks.replay import replay_event
from webhooks.settings import Settings

pytestmark = pytest.mark.usefixtures("stack")

# 1s then 2s, within a 4 s window: a delivery that always fails makes 3 attempts (0, 1, 3).
STACK_ENV = {"WEBHOOKS_RETRY_SCHEDULE": "1s,2s", "WEBHOOKS_RETRY_WINDOW": "4s"}


def test_committed_event_is_delivered_once_signed_and_recorded(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    endpoint_id, secret = new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project, data={"deployment_id": "dep_42"})

    [delivery] = wait_for_state(engine, settings, event_id, "succeeded")
    [request] = receiver.received(path)
    envelope = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert envelope["id"] == event_id == request.headers["webhook-id"]
    assert envelope["data"] == {"deployment_id": "dep_42"}
    assert envelope["project_id"] == project
    assert envelope["created_at"].endswith("Z")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("CloudAPI-Webhooks/")
    assert delivery.endpoint_id == endpoint_id and delivery.attempt_count == 1
    [attempt] = delivery.attempts
    assert (attempt.number, attempt.trigger, attempt.response_status, attempt.error_kind) == (
        1,
        "scheduled",
        200,
        None,
    )
    assert attempt.response_body == '{"ok": true}'
    settle(1.0)
    assert len(receiver.received(path)) == 1


def test_event_published_in_a_rolled_back_transaction_is_never_sent(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)
    with engine.connect() as conn:
        transaction = conn.begin()
        event_id = publish(
            conn, project_id=project, type="deployment.failed", data={}, settings=settings
        )
        transaction.rollback()
    committed = publish_one(engine, settings, project)
    wait_for_state(engine, settings, committed, "succeeded")
    settle(0.5)
    assert [r.headers["webhook-id"] for r in receiver.received(path)] == [committed]
    with pytest.raises(EventNotFound):
        deliveries(engine, settings, event_id)


def test_publish_works_with_an_orm_session(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    from sqlalchemy.orm import Session

    new_endpoint(engine, settings, receiver.url(path), project)
    with Session(engine) as session, session.begin():
        event_id = publish(
            session, project_id=project, type="project.created", data={"a": 1}, settings=settings
        )
    wait_for_state(engine, settings, event_id, "succeeded")


def test_failing_endpoint_is_retried_with_the_same_id_and_body_until_it_answers(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    receiver.script(path, [500, 500, 200])
    _, secret = new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)

    [delivery] = wait_for_state(engine, settings, event_id, "succeeded")
    requests = receiver.received(path)
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {event_id}
    assert len({r.body for r in requests}) == 1
    for request in requests:
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert [(a.number, a.response_status, a.error_kind) for a in delivery.attempts] == [
        (1, 500, "http_status"),
        (2, 500, "http_status"),
        (3, 200, None),
    ]
    gaps = [b.arrived_at - a.arrived_at for a, b in itertools.pairwise(requests)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps


def test_endpoint_that_always_fails_ends_failed_then_replay_delivers_it(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    receiver.script(path, [503])
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)

    [delivery] = wait_for_state(engine, settings, event_id, "failed", timeout=30)
    assert delivery.attempt_count == 3 and delivery.next_attempt_at is None
    settle(1.5)
    assert len(receiver.received(path)) == 3

    receiver.script(path, [200])
    with engine.begin() as conn:
        assert replay_event(conn, settings, event_id).queued == 1
    [delivery] = wait_for_state(engine, settings, event_id, "succeeded")
    requests = receiver.received(path)
    assert len(requests) == 4
    assert requests[3].body == requests[0].body
    assert requests[3].headers["webhook-id"] == event_id
    assert requests[3].headers["webhook-signature"] != requests[0].headers["webhook-signature"]
    assert [a.trigger for a in delivery.attempts] == ["scheduled"] * 3 + ["replay"]


def test_failed_replay_leaves_state_and_schedule_alone(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    receiver.script(path, [500])
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)
    wait_for_state(engine, settings, event_id, "failed", timeout=30)
    with engine.begin() as conn:
        replay_event(conn, settings, event_id)
    wait_for(lambda: len(attempts(engine, settings, event_id)) == 4, what="the replay attempt")
    settle(0.5)
    [delivery] = deliveries(engine, settings, event_id)
    assert delivery.state == "failed" and delivery.next_attempt_at is None
    assert delivery.attempts[-1].trigger == "replay"


def test_redirect_is_a_failure_and_is_not_followed(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    new_endpoint(engine, settings, receiver.url("/redirect"), project)
    event_id = publish_one(engine, settings, project)
    wait_for(lambda: attempts(engine, settings, event_id), what="the first attempt")
    first = attempts(engine, settings, event_id)[0]
    assert (first.response_status, first.error_kind) == (301, "redirect")
    assert "/redirected" in (first.error_message or "")
    assert receiver.received("/redirected") == []


def test_idempotency_key_returns_the_same_event_and_delivers_once(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)
    first = publish_one(engine, settings, project, idempotency_key="order-1")
    again = publish_one(engine, settings, project, idempotency_key="order-1")
    other_project = publish_one(engine, settings, project + "x", idempotency_key="order-1")
    assert first == again != other_project
    wait_for_state(engine, settings, first, "succeeded")
    settle(0.5)
    assert len(receiver.received(path)) == 1
    assert count_rows(engine, settings, "events") >= 2


def test_fan_out_follows_each_endpoints_filter(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    everything, _ = new_endpoint(engine, settings, receiver.url(path + "/all"), project)
    prefix, _ = new_endpoint(
        engine, settings, receiver.url(path + "/prefix"), project, ("deployment.*",)
    )
    exact, _ = new_endpoint(
        engine, settings, receiver.url(path + "/exact"), project, ("project.created",)
    )
    new_endpoint(engine, settings, receiver.url(path + "/elsewhere"), project + "other")

    event_id = publish_one(engine, settings, project, "deployment.build.failed")
    found = wait_for_state(engine, settings, event_id, "succeeded")
    assert {d.endpoint_id for d in found} == {everything, prefix}
    assert exact not in {d.endpoint_id for d in found}
    settle(0.3)
    assert receiver.received(path + "/exact") == []
    assert receiver.received(path + "/elsewhere") == []


def test_disabled_endpoint_holds_its_deliveries_until_enabled(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url(path), project)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id, reason="maintenance")
    event_id = publish_one(engine, settings, project)
    settle(1.5)
    [delivery] = deliveries(engine, settings, event_id)
    assert delivery.state == "pending" and delivery.attempt_count == 0
    assert receiver.received(path) == []

    with engine.begin() as conn:
        enable_endpoint(conn, settings, endpoint_id)
    wait_for_state(engine, settings, event_id, "succeeded", timeout=5)
    assert len(receiver.received(path)) == 1


def test_unreachable_endpoint_is_recorded_as_a_connect_error(
    engine: Engine, settings: Settings, project: str
) -> None:
    new_endpoint(engine, settings, "http://127.0.0.1:9/nothing-listens-here", project)
    event_id = publish_one(engine, settings, project)
    wait_for(lambda: attempts(engine, settings, event_id), what="the first attempt")
    first = attempts(engine, settings, event_id)[0]
    assert first.error_kind == "connect" and first.response_status is None


def test_attempt_rows_store_request_and_response(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)
    wait_for_state(engine, settings, event_id, "succeeded")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                f"SELECT request_url, request_headers, response_headers, duration_ms "
                f'FROM "{settings.db_schema}".attempts WHERE event_id = :e'
            ),
            {"e": event_id},
        ).one()
    assert row.request_url == receiver.url(path)
    assert row.request_headers["webhook-id"] == event_id
    assert "webhook-signature" in row.request_headers
    assert row.response_headers
    assert row.duration_ms >= 0
    assert json.loads(json.dumps(row.request_headers))
