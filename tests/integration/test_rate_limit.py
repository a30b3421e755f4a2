"""A per-endpoint rate limit holds across several dispatchers and workers."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import cli_ok
from tests.support.deliveries import attempts, new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.settings import Settings

pytestmark = pytest.mark.slow

STACK_ENV = {"WEBHOOKS_DISPATCH_POLL": "0.1s"}
RATE = 4
EVENTS = 16


def test_rate_limited_endpoint_is_paced_across_two_dispatchers_and_two_workers(
    env: dict[str, str],
    stack: Stack,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    stack.start_worker()
    stack.start_dispatcher()
    # Warm every process up first, so the first requests are not slower than the rest.
    warm_up = project + "warm"
    new_endpoint(engine, settings, receiver.url(path + "/warm"), warm_up)
    for _ in range(4):
        wait_for_state(engine, settings, publish_one(engine, settings, warm_up), "succeeded")
    added = cli_ok(
        env,
        "endpoint",
        "add",
        receiver.url(path),
        "--project",
        project,
        "--rate-limit",
        str(RATE),
        "--json",
    )
    assert added["rate_limit"] == RATE
    events = [publish_one(engine, settings, project, data={"i": i}) for i in range(EVENTS)]

    wait_for(lambda: len(receiver.received(path)) >= EVENTS, timeout=30, what="all deliveries")
    for event_id in events:
        wait_for_state(engine, settings, event_id, "succeeded")
    # The limit governs when we start requests; what the receiver sees also carries each
    # request's transit time (the first ones from a fresh worker thread are slower).
    starts = sorted(a.started_at.timestamp() for e in events for a in attempts(engine, settings, e))
    print("attempt starts (s):", " ".join(f"{t - starts[0]:.3f}" for t in starts))
    assert len(starts) == EVENTS
    # A token bucket of one second: at most RATE at once after idling, then RATE per second, so
    # any window of one second sees at most 2 * RATE starts, and the run takes at least
    # (EVENTS - RATE) / RATE seconds. Slack: 50 ms for scheduling.
    for i, first in enumerate(starts):
        in_window = [t for t in starts[i:] if t - first < 1.0 - 0.05]
        assert len(in_window) <= 2 * RATE, (i, " ".join(f"{t - starts[0]:.3f}" for t in starts))
    assert starts[-1] - starts[0] >= (EVENTS - RATE) / RATE - 0.05
