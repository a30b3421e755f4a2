"""A busy dispatcher lets a steady stream gather (`workers.dispatcher.GATHER`): publishes that
each commit alone, and wake it with their own notification, reach the workers in a few tasks,
not one message each. One message per event is what saturated a worker at half of its peak
(bench/RESULTS.md, issue 15). A dispatcher whose workers keep up does not pause: a slow
stream's events each go at once.

Real Postgres (NOTIFY wakes the dispatcher at every commit), real Redis, no worker: every
claim stays in flight, and the queue shows every message the dispatcher sent. Where a test
needs a worker that is free, a client waits in BRPOP on the queue, as an idle Celery
consumer does."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint, publish_one
from tests.support.polling import wait_for
from webhooks.heartbeats import forget
from webhooks.messages import claims_from_kwargs
from webhooks.settings import Settings
from workers.app import celery_config
from workers.dispatcher import GATHER, QUIET_IN_FLIGHT, Dispatcher

EVENTS = 100
INTERVAL = 0.01  # shorter than a round plus the pause, longer than a round alone


@pytest.fixture
def busy(settings: Settings) -> Settings:
    if not settings.broker_url.startswith("redis://"):
        pytest.skip("reads the messages from the Redis queue")
    # No endpoint cap in the way: with no worker, every claim stays in flight.
    return dataclasses.replace(settings, endpoint_concurrency=2 * EVENTS)


@pytest.fixture
def dispatching(busy: Settings, engine: Engine) -> Iterator[Dispatcher]:
    app = Celery("gathering", set_as_current=False)
    app.conf.update(celery_config(busy))
    dispatcher = Dispatcher(busy, app)
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    yield dispatcher
    dispatcher.stop()
    thread.join(timeout=10)
    with engine.begin() as conn:
        forget(conn, busy, dispatcher.id)
    redis.Redis.from_url(busy.broker_url).delete(busy.queue)
    app.close()


@pytest.fixture
def ticking(busy: Settings, engine: Engine) -> Iterator[Dispatcher]:
    """A dispatcher whose rounds the test runs itself (`Dispatcher.tick`), with nothing in
    flight from the module's earlier tests."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {busy.db_schema}.deliveries SET state = 'cancelled', "
                "next_attempt_at = NULL, claim_token = NULL, lease_expires_at = NULL "
                "WHERE state IN ('pending', 'delivering')"
            )
        )
    app = Celery("gathering", set_as_current=False)
    app.conf.update(celery_config(busy))
    dispatcher = Dispatcher(busy, app)
    yield dispatcher
    dispatcher.engine.dispose()
    redis.Redis.from_url(busy.broker_url).delete(busy.queue)
    app.close()


class IdleConsumer:
    """A client blocked in BRPOP on the queue, as an idle worker's consumer is: Redis hands it
    the next message pushed there before it answers anyone else."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = redis.Redis.from_url(settings.broker_url)
        self.name = f"idle-{id(self)}"
        self.taken: list[bytes] = []
        self.thread = threading.Thread(target=self._take, daemon=True)

    def __enter__(self) -> IdleConsumer:
        self.thread.start()
        watcher = redis.Redis.from_url(self.settings.broker_url)
        wait_for(
            lambda: any(
                c["name"] == self.name and c["cmd"] == "brpop" for c in watcher.client_list()
            ),
            timeout=10,
            interval=0.01,
            what="the consumer blocked in BRPOP",
        )
        return self

    def _take(self) -> None:
        self.client.client_setname(self.name)
        popped = self.client.brpop([self.settings.queue], timeout=10)
        if popped is not None:
            self.taken.append(popped[1])

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=15)


def _messages(settings: Settings) -> list[list[str]]:
    """Each queued message's delivery ids."""
    client = redis.Redis.from_url(settings.broker_url)
    messages = []
    for raw in client.lrange(settings.queue, 0, -1):
        _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        messages.append([claim.delivery_id for claim in claims_from_kwargs(kwargs)])
    return messages


def test_a_steady_stream_of_commits_goes_to_the_workers_in_a_few_tasks(
    busy: Settings, engine: Engine, dispatching: Dispatcher
) -> None:
    new_endpoint(engine, busy, "http://127.0.0.1:9/hook", "proj_gather")
    # The first round (and the queue's binding) before the stream starts.
    publish_one(engine, busy, "proj_gather")
    wait_for(lambda: len(_messages(busy)) == 1, timeout=10, what="the first message")
    (first,) = _messages(busy)
    started = time.monotonic()
    for n in range(EVENTS):
        time.sleep(max(0.0, started + n * INTERVAL - time.monotonic()))
        publish_one(engine, busy, "proj_gather", data={"n": n})
    wait_for(
        lambda: len({d for m in _messages(busy) for d in m}) == EVENTS + 1,
        timeout=30,
        interval=0.01,
        what="every event's claim in the queue",
    )
    elapsed = time.monotonic() - started
    messages = [m for m in _messages(busy) if m != first]
    # A round that sent is followed by the pause: at most one message per GATHER (each
    # round's claims travel as one task), however many commits woke the dispatcher.
    assert len(messages) <= elapsed / GATHER + 1, (len(messages), elapsed)
    ids = [d for m in messages for d in m]
    assert len(ids) == len(set(ids)) == EVENTS  # each claim sent once


def test_a_round_whose_message_a_free_worker_took_is_not_followed_by_a_pause(
    busy: Settings, engine: Engine, ticking: Dispatcher
) -> None:
    new_endpoint(engine, busy, "http://127.0.0.1:9/hook", "proj_free")
    publish_one(engine, busy, "proj_free")
    with IdleConsumer(busy) as consumer:
        result = ticking.tick()
    assert result.sent == 1
    assert len(consumer.taken) == 1
    assert not result.backlogged


def test_a_round_whose_message_waits_in_the_broker_is_followed_by_a_pause(
    busy: Settings, engine: Engine, ticking: Dispatcher
) -> None:
    new_endpoint(engine, busy, "http://127.0.0.1:9/hook", "proj_busy")
    publish_one(engine, busy, "proj_busy")
    result = ticking.tick()  # nobody consumes: the message stays in the queue
    assert result.sent == 1
    assert len(_messages(busy)) == 1
    assert result.backlogged


def test_a_round_that_leaves_many_attempts_in_flight_is_followed_by_a_pause(
    busy: Settings, engine: Engine, ticking: Dispatcher
) -> None:
    new_endpoint(engine, busy, "http://127.0.0.1:9/hook", "proj_many")
    for n in range(QUIET_IN_FLIGHT):
        publish_one(engine, busy, "proj_many", data={"n": n})
    with IdleConsumer(busy) as consumer:
        result = ticking.tick()  # one task carries the round's claims; the consumer takes it
    assert result.sent == QUIET_IN_FLIGHT
    assert len(consumer.taken) == 1
    assert result.backlogged


def test_a_broker_that_cannot_say_what_waits_leaves_the_sent_claims_sent(
    busy: Settings, engine: Engine, ticking: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unanswered(channel: object, queue: str) -> int:
        raise redis.exceptions.ConnectionError("the queue length was not read")

    monkeypatch.setattr("workers.dispatcher.waiting", unanswered)
    new_endpoint(engine, busy, "http://127.0.0.1:9/hook", "proj_mute")
    publish_one(engine, busy, "proj_mute")
    result = ticking.tick()
    assert result.sent == 1
    assert result.backlogged  # not knowing, it gathers as if the workers lagged
    assert len(_messages(busy)) == 1
    with engine.connect() as conn:
        states = conn.execute(
            sa.text(f"SELECT state, count(*) FROM {busy.db_schema}.deliveries GROUP BY state")
        ).all()
    assert ("delivering", 1) in [tuple(row) for row in states]  # claimed, not given back
