"""What wakes a dispatcher: a LISTEN on the schema's channel, against a real Postgres.

`publish()` notifies in the same statement that records the event, so the notification
arrives at commit, never for a rolled-back publish or a duplicate; a queued
replay says so in its payload, so that dispatchers look at the replays table only then.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint, publish_one
from webhooks.endpoints import disable_endpoint
from webhooks.outbox import REPLAYS_QUEUED, channel, publish
from webhooks.replay import replay_event
from webhooks.settings import Settings


@pytest.fixture
def listener(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    url = sa.make_url(settings.database_url).set(drivername="postgresql")
    conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
    conn.execute(f'LISTEN "{channel(settings)}"')
    yield conn
    conn.close()


def received(listener: psycopg.Connection[Any], timeout: float = 0.5) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=timeout)]


def test_publish_notifies_at_commit_and_not_on_rollback(
    engine: Engine, settings: Settings, listener: psycopg.Connection[Any], project: str
) -> None:
    new_endpoint(engine, settings, "http://127.0.0.1:9/n", project)
    with engine.connect() as conn:
        transaction = conn.begin()
        publish(conn, project_id=project, type="deployment.succeeded", data={}, settings=settings)
        assert received(listener, timeout=0.2) == []  # not before the commit
        transaction.commit()
    assert received(listener) == [""]

    with engine.connect() as conn:
        transaction = conn.begin()
        publish(conn, project_id=project, type="deployment.succeeded", data={}, settings=settings)
        transaction.rollback()
    assert received(listener) == []


def test_every_committed_publish_notifies_and_a_duplicate_does_not(
    engine: Engine, settings: Settings, listener: psycopg.Connection[Any], project: str
) -> None:
    # Who listens is only known when the event is expanded, after the commit: the publish
    # wakes the dispatchers even when no endpoint will get it (reading the endpoints here is
    # what made publish cost grow with their number).
    endpoint_id, _ = new_endpoint(engine, settings, "http://127.0.0.1:9/held", project)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id, reason="maintenance")
    publish_one(engine, settings, project, idempotency_key="once")  # held, once expanded
    publish_one(engine, settings, f"{project}_nobody")  # no endpoint at all
    assert received(listener) == ["", ""]
    publish_one(engine, settings, project, idempotency_key="once")  # nothing new to expand
    assert received(listener) == []


def test_a_queued_replay_says_so(
    engine: Engine, settings: Settings, listener: psycopg.Connection[Any], project: str
) -> None:
    new_endpoint(engine, settings, "http://127.0.0.1:9/r", project)
    event_id = publish_one(engine, settings, project)
    assert received(listener) == [""]
    with engine.begin() as conn:
        assert replay_event(conn, settings, event_id).queued == 1
    assert received(listener) == [REPLAYS_QUEUED]
