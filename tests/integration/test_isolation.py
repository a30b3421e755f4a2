"""A black-holed endpoint cannot starve healthy ones: per-endpoint cap and circuit breaker."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from tests.support.deliveries import attempts, deliveries, execute_sql, new_endpoint, publish_one
from tests.support.polling import wait_for
from tests.support.receivers import Receiver
from webhooks.endpoints import get_endpoint
from webhooks.settings import Settings

pytestmark = [pytest.mark.usefixtures("stack"), pytest.mark.slow]

STACK_ENV = {
    "WEBHOOKS_TIMEOUT": "2s",
    "WEBHOOKS_LEASE": "6s",
    "WEBHOOKS_ENDPOINT_CONCURRENCY": "2",
    "WEBHOOKS_BREAKER_THRESHOLD": "3",
    "WEBHOOKS_BREAKER_COOLDOWN": "60s",
    "WEBHOOKS_RETRY_SCHEDULE": "1s",
    "WEBHOOKS_RETRY_WINDOW": "1h",
}
EVENTS = 40
HEALTHY = 9


def healthy_latencies(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, prefix: str
) -> list[float]:
    """Publish EVENTS events and return arrival delay (s) of each healthy delivery."""
    published: dict[str, float] = {}
    import time

    for i in range(EVENTS):
        published[publish_one(engine, settings, project, data={"i": i})] = time.time()
    healthy = [f"{prefix}/ok{n}" for n in range(HEALTHY)]
    arrived: Callable[[], bool] = lambda: all(  # noqa: E731
        len(receiver.received(p)) >= EVENTS for p in healthy
    )
    wait_for(arrived, timeout=60, what="every healthy delivery")
    return [
        r.arrived_at - published[r.headers["webhook-id"]]
        for p in healthy
        for r in receiver.received(p)
    ]


def test_black_holed_endpoint_is_capped_then_cut_off_and_healthy_ones_keep_flowing(
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
    record_property: Callable[[str, object], None],
) -> None:
    baseline_project = project + "base"
    for n in range(HEALTHY):
        new_endpoint(engine, settings, receiver.url(f"{path}/base/ok{n}"), baseline_project)
        new_endpoint(engine, settings, receiver.url(f"{path}/ok{n}"), project)
    baseline = healthy_latencies(engine, settings, receiver, baseline_project, f"{path}/base")

    hole, _ = new_endpoint(engine, settings, receiver.url(f"/hang{path}"), project)
    with_hole = healthy_latencies(engine, settings, receiver, project, path)

    for name, values in (("without black hole", baseline), ("with black hole", with_hole)):
        ordered = sorted(values)
        summary = (
            f"p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms over {len(ordered)} deliveries"
        )
        print(f"healthy latency {name}: {summary}")
        record_property(name, summary)

    # Healthy deliveries may all be done before the black hole's first attempts time out
    # (batches make them quick): wait for the three timeouts that open its breaker, then
    # for two more deadlines, in which nothing more may be sent to it.
    def timeouts() -> int:
        rows = execute_sql(
            engine,
            settings,
            "SELECT count(*) FROM {s}.attempts WHERE endpoint_id = :id AND error_kind = 'timeout'",
            id=hole,
        )
        return int(rows[0][0])

    wait_for(lambda: timeouts() >= 3, timeout=30, what="three timeouts to open the breaker")
    time.sleep(2 * 2.0)  # WEBHOOKS_TIMEOUT twice: proving that nothing follows takes time
    # The black hole never held more than the cap of threads before its breaker opened.
    hole_requests = receiver.received(f"/hang{path}")
    assert 3 <= len(hole_requests) <= 3 + 2, len(hole_requests)
    with engine.connect() as conn:
        endpoint = get_endpoint(conn, settings, hole)
    assert endpoint.enabled
    # Its deliveries are held (pending, later), not dropped and not failed.
    states = [
        d.state
        for e in {r.headers["webhook-id"] for r in hole_requests}
        for d in deliveries(engine, settings, e)
        if d.endpoint_id == hole
    ]
    assert states and set(states) <= {"pending", "delivering"}
    timed_out = [
        a
        for e in {r.headers["webhook-id"] for r in hole_requests}
        for a in attempts(engine, settings, e)
        if a.endpoint_id == hole
    ]
    assert timed_out and all(a.error_kind == "timeout" for a in timed_out)
