"""What a receiver sends back, as stored.

Real attempts (a real receiver, the real sender and SSRF guard, recorded in a real Postgres):
headers are stored bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from tests.helpers import attempts, new_endpoint, publish_one
from tests.http_receivers import BehaviourServer
from webhooks import clock
from webhooks.attempts import run_attempt
from webhooks.claims import claim_due
from webhooks.database import sql
from webhooks.delivery import MAX_RESPONSE_HEADER_BYTES, TRUNCATED_HEADERS_KEY, HttpSender
from webhooks.models import Attempt
from webhooks.settings import Settings


@pytest.fixture(scope="module")
def server() -> Iterator[BehaviourServer]:
    receiver = BehaviourServer().start()
    yield receiver
    receiver.stop()


def attempt_once(
    engine: Engine, settings: Settings, url: str, project: str, sender: HttpSender
) -> tuple[str, Attempt]:
    """Publish one event to a new endpoint at ``url`` and make its first attempt."""
    new_endpoint(engine, settings, url, project)
    event_id = publish_one(engine, settings, project)
    with engine.begin() as conn:
        batch = claim_due(conn, settings, clock.now(), 100)
    [claim] = [c for c in batch.claims if c.event_id == event_id]
    run_attempt(engine, sender, settings, claim)
    [attempt] = attempts(engine, settings, event_id)
    return event_id, attempt


def stored_headers(engine: Engine, settings: Settings, event_id: str) -> dict[str, str]:
    with engine.connect() as conn:
        headers: dict[str, str] = conn.execute(
            sql(
                "SELECT response_headers FROM {s}.attempts WHERE event_id = :event_id",
                settings.db_schema,
            ),
            {"event_id": event_id},
        ).scalar_one()
    return headers


def test_a_receiver_sending_75_kb_of_headers_has_8_kib_stored_and_marked(
    engine: Engine, settings: Settings, server: BehaviourServer, project: str
) -> None:
    with HttpSender(allowed_networks=settings.allowed_networks) as sender:
        event_id, attempt = attempt_once(
            engine, settings, server.url("/many-headers"), project, sender
        )

    assert (attempt.response_status, attempt.error_kind) == (200, None)
    headers = stored_headers(engine, settings, event_id)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    assert size <= MAX_RESPONSE_HEADER_BYTES
    assert "x-filler-0" in headers and "x-filler-29" not in headers
    assert any(value.endswith("[truncated]") for value in headers.values())
    assert "bytes of response headers received" in headers[TRUNCATED_HEADERS_KEY]
