"""A bulk recovery to a slow endpoint plays fair, and survives its dispatcher's kill -9.

Real processes: a worker and dispatchers (the `stack` fixture), a real receiver whose slow
endpoint never answers (each attempt takes the whole 2 s deadline).
"""

from __future__ import annotations

import signal
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import cli_ok
from tests.support.deliveries import new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks import clock
from webhooks.database import sql
from webhooks.endpoints import set_rate_limit
from webhooks.recovery import get_recovery
from webhooks.settings import Settings

pytestmark = [pytest.mark.usefixtures("stack"), pytest.mark.slow]

CAP = 2
STACK_ENV = {
    "WEBHOOKS_TIMEOUT": "2s",
    "WEBHOOKS_LEASE": "6s",
    "WEBHOOKS_ENDPOINT_CONCURRENCY": str(CAP),
    # Slow, not dead: the breaker would stop the recovery's sends, which is not the point.
    "WEBHOOKS_BREAKER_THRESHOLD": "1000",
    "WEBHOOKS_RECOVERY_BATCH": "10",
    "WEBHOOKS_DISPATCH_BATCH": "20",
}
SLOW_REPLAYS = 300
HEALTHY_EVENTS = 30


def recovery(engine: Engine, settings: Settings, recovery_id: str) -> Any:
    with engine.connect() as conn:
        return get_recovery(conn, settings, recovery_id, clock.now())


def attempt_rows(engine: Engine, settings: Settings, endpoint_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sql(
                    "SELECT delivery_id, trigger, started_at, duration_ms FROM {s}.attempts "
                    "WHERE endpoint_id = :id",
                    settings.db_schema,
                ),
                {"id": endpoint_id},
            )
        )


def most_at_once(rows: list[Any]) -> int:
    """The most attempts whose [start, start + duration) intervals overlap."""
    edges = []
    for row in rows:
        edges.append((row.started_at, 1))
        edges.append((row.started_at + timedelta(milliseconds=row.duration_ms), -1))
    running = peak = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += step
        peak = max(peak, running)
    return peak


def test_a_bulk_recovery_to_a_slow_endpoint_never_holds_up_a_healthy_endpoint(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    # Events the slow endpoint never had (it is created after them): its recovery is pure
    # replays, a few hundred of them, each taking the whole deadline.
    for i in range(SLOW_REPLAYS):
        publish_one(engine, settings, project, data={"i": i})
    slow, _ = new_endpoint(engine, settings, receiver.url(f"/hang{path}"), project)
    started = cli_ok(
        env,
        "recover",
        "--project",
        project,
        "--endpoint",
        slow,
        "--since",
        "1h",
        "--state",
        "all",
        "--include-unrouted",
        "--no-wait",
        "--json",
    )
    assert started["total"] == SLOW_REPLAYS
    wait_for(lambda: receiver.received(f"/hang{path}"), what="the recovery's first sends")

    healthy_project = project + "ok"
    new_endpoint(engine, settings, receiver.url(path + "/ok"), healthy_project)
    events = [
        publish_one(engine, settings, healthy_project, data={"i": i}) for i in range(HEALTHY_EVENTS)
    ]
    for event_id in events:
        wait_for_state(engine, settings, event_id, "succeeded", timeout=60)
    assert recovery(engine, settings, started["id"]).state == "running"

    def recorded() -> list[Any] | None:
        rows = attempt_rows(engine, settings, slow)
        return rows if len(rows) >= 4 * CAP else None

    slow_attempts = wait_for(recorded, timeout=30, what="the slow endpoint's attempts")
    assert recovery(engine, settings, started["id"]).state == "running"
    assert {row.trigger for row in slow_attempts} == {"replay"}
    assert most_at_once(slow_attempts) <= CAP
    cancelled = cli_ok(env, "recover", "cancel", started["id"], "--json")
    assert cancelled["state"] == "cancelled"
    print(
        f"healthy endpoint: {HEALTHY_EVENTS} deliveries succeeded while the recovery had sent "
        f"{cancelled['sent']} of {SLOW_REPLAYS} replays to the slow endpoint"
    )


def test_a_recovery_resumes_after_its_dispatcher_is_killed_and_replays_each_delivery_once(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    stack: Stack,
    project: str,
    path: str,
) -> None:
    count = 60
    events = [publish_one(engine, settings, project, data={"i": i}) for i in range(count)]
    endpoint, _ = new_endpoint(engine, settings, receiver.url(path), project)
    with engine.begin() as conn:
        # 20 requests a second: the recovery takes seconds, batches of 10 at a time.
        set_rate_limit(conn, settings, endpoint, 20.0)
    started = cli_ok(
        env,
        "recover",
        "--project",
        project,
        "--endpoint",
        endpoint,
        "--since",
        "1h",
        "--include-unrouted",
        "--no-wait",
        "--json",
    )

    def mid_way() -> bool:
        now = recovery(engine, settings, started["id"])
        return 10 <= now.queued < count and now.sent > 0

    wait_for(mid_way, timeout=30, what="the recovery to be half-way")
    dispatchers = [p for p in stack.processes if p.name == "dispatcher" and p.popen.poll() is None]
    for dispatcher in dispatchers:
        dispatcher.signal(signal.SIGKILL)
        dispatcher.popen.wait(5)
    killed_at = recovery(engine, settings, started["id"])
    assert killed_at.state == "running" and killed_at.queued < count
    stack.start_dispatcher()

    done = wait_for(
        lambda: (r := recovery(engine, settings, started["id"])).state == "done" and r,
        timeout=60,
        what="the recovery to finish",
    )
    assert (done.total, done.queued, done.sent, done.succeeded) == (count, count, count, count)
    replays = Counter(row.delivery_id for row in attempt_rows(engine, settings, endpoint))
    assert len(replays) == count and set(replays.values()) == {1}
    assert {r.headers["webhook-id"] for r in receiver.received(path)} == set(events)
