"""A dispatcher round's messages reach Redis in one round trip, byte for byte as one publish
each would write them (`workers.dispatcher.send_round`); one more asks whether a worker took
them (`workers.dispatcher.untaken_messages`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from webhooks.messages import Claim, Trigger
from webhooks.settings import Settings
from workers.app import celery_config
from workers.dispatcher import send_claims, send_round, untaken_messages

ROUND = 12


def claim(n: int) -> Claim:
    return Claim(
        delivery_id=f"dlv_{n:016x}",
        event_id=f"evt_{n}",
        endpoint_id="ep_round",
        attempt=1,
        claim_token=f"6f1c3a2e-0000-4000-8000-{n:012x}",
        trigger=Trigger.SCHEDULED,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    if not settings.broker_url.startswith("redis://"):
        pytest.skip("counts Redis round trips")
    app = Celery("broker-round", set_as_current=False)
    app.conf.update(celery_config(settings))
    # The first publish binds the queue (a few commands, once per process): not a round's.
    send_round(app, settings, [[claim(0)]])
    yield app
    redis.Redis.from_url(settings.broker_url).delete(settings.queue)
    app.close()


class RoundTrips:
    """Records writes of commands to Redis: a pipeline is one, a lone command one each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.packets: list[bytes] = []
        send = redis.connection.AbstractConnection.send_packed_command

        def counted(connection: Any, command: Any, check_health: bool = True) -> None:
            parts = [command] if isinstance(command, (bytes, memoryview)) else command
            self.packets.append(b"".join(bytes(part) for part in parts))
            send(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)


def queued(settings: Settings) -> list[dict[str, Any]]:
    """The queue's messages, oldest first, without the per-publish delivery tag."""
    client = redis.Redis.from_url(settings.broker_url)
    messages = [json.loads(raw) for raw in reversed(client.lrange(settings.queue, 0, -1))]
    client.delete(settings.queue)
    for message in messages:
        del message["properties"]["delivery_tag"]
    return messages


def test_a_round_of_messages_costs_one_redis_round_trip(
    app: Celery, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued(settings)
    groups = [[claim(n)] for n in range(1, ROUND)] + [[claim(100), claim(101)]]
    trips = RoundTrips(monkeypatch)
    send_round(app, settings, groups)
    untaken = untaken_messages(app, settings)
    pushes, asked = trips.packets
    assert pushes.count(b"LPUSH") == ROUND
    assert asked.startswith(b"*2\r\n$4\r\nLLEN\r\n")
    assert untaken == ROUND  # no worker here: every message still waits
    assert len(queued(settings)) == ROUND


def test_a_round_writes_the_messages_one_publish_each_would(
    app: Celery, settings: Settings
) -> None:
    groups = [[claim(1)], [claim(2), claim(3)]]
    queued(settings)
    with app.producer_or_acquire() as producer:
        for group in groups:
            send_claims(app, settings, group, producer)
    one_by_one = queued(settings)
    send_round(app, settings, groups)
    assert queued(settings) == one_by_one
    # Flower's search reads these: the task id and the arguments' text name each delivery.
    assert [m["headers"]["id"] for m in one_by_one] == [
        "dlv_0000000000000001-a1-6f1c3a2e",
        "dlv_0000000000000002-a1-b2-6f1c3a2e",
    ]
    assert "dlv_0000000000000003" in one_by_one[1]["headers"]["kwargsrepr"]
