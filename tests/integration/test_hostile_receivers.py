"""What a receiver sends back is untrusted input: it can never loop a delivery.

Real dispatcher and worker processes, a real receiver answering 503 with hostile
``Retry-After`` values. Before the fix, some of these raised while the attempt was being
recorded: the delivery was POSTed again every lease with no attempt stored. Now every request
has exactly one attempt row, and the delivery fails within its window.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from tests.support.deliveries import attempts, new_endpoint, publish_one, wait_for_state
from tests.support.receivers import Receiver
from webhooks.database import sql
from webhooks.settings import Settings

pytestmark = pytest.mark.usefixtures("stack")

# 1s then 2s within a 4 s window; a short lease, so that a loop (a claim that is never
# recorded, POSTed again when the lease ends) would show up within the test.
STACK_ENV = {
    "WEBHOOKS_RETRY_SCHEDULE": "1s,2s",
    "WEBHOOKS_RETRY_WINDOW": "4s",
    "WEBHOOKS_TIMEOUT": "2s",
    "WEBHOOKS_LEASE": "3s",
}
WINDOW = timedelta(seconds=4)

HOSTILE_RETRY_AFTER = {
    "huge": "999999999999",
    "negative": "-1",
    "superscript": "\xb2",
    "exponent": "1e9",
    "date-1900": "Mon, 01 Jan 1900 00:00:00 GMT",
    "date-3000": "Wed, 01 Jan 3000 00:00:00 GMT",
    "garbage": "x" * 8192,
}


def test_hostile_retry_after_values_give_one_attempt_per_request_within_the_window(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    events = {}
    for name, value in HOSTILE_RETRY_AFTER.items():
        path = f"/retry-after/{name}"
        receiver.script(path, [503])
        receiver.reply_headers(path, {"retry-after": value})
        new_endpoint(engine, settings, receiver.url(path), f"{project}_{name}")
        events[name] = publish_one(engine, settings, f"{project}_{name}")

    for name, event_id in events.items():
        [delivery] = wait_for_state(engine, settings, event_id, "failed", timeout=30)
        stored = attempts(engine, settings, event_id)
        requests = receiver.received(f"/retry-after/{name}")
        assert len(stored) == len(requests) == delivery.attempt_count, name
        assert [a.number for a in stored] == list(range(1, len(stored) + 1)), name
        assert all(a.response_status == 503 for a in stored), name
        first = stored[0].started_at
        # Scheduled no later than the window's end (a second of slack for the dispatcher's
        # poll and the worker's start).
        assert all(a.started_at - first <= WINDOW + timedelta(seconds=1) for a in stored), name
        if name != "garbage":  # 8 KiB is past what is kept of a response's headers
            # The header was stored as received, whatever it said.
            assert _stored_retry_after(engine, settings, event_id) == {HOSTILE_RETRY_AFTER[name]}, (
                name
            )


def _stored_retry_after(engine: Engine, settings: Settings, event_id: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sql(
                    "SELECT response_headers ->> 'retry-after' FROM {s}.attempts "
                    "WHERE event_id = :event_id",
                    settings.db_schema,
                ),
                {"event_id": event_id},
            ).scalars()
        )
