"""Leases: a delivery whose worker vanished is claimed again; several dispatchers share work."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import HANG, Receiver
from webhooks.settings import Settings

# A short deadline and lease so that recovery is quick; the lease stays longer than the
# deadline, as the settings insist.
STACK_ENV = {"WEBHOOKS_TIMEOUT": "2s", "WEBHOOKS_LEASE": "4s"}


@pytest.fixture
def processes(env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(env=env, logdir=tmp_path)
    yield stack
    stack.stop()


@pytest.mark.slow
def test_delivery_of_a_killed_worker_is_claimed_again_after_its_lease(
    processes: Stack,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    receiver.script(path, [HANG, 200])
    worker = processes.start_worker()
    processes.start_dispatcher()
    new_endpoint(engine, settings, receiver.url(path), project)
    published_at = time.time()
    event_id = publish_one(engine, settings, project)

    wait_for(lambda: receiver.received(path), what="the first request to arrive")
    worker.signal(signal.SIGKILL)
    worker.popen.wait(5)
    processes.start_worker()

    [delivery] = wait_for_state(engine, settings, event_id, "succeeded", timeout=20)
    requests = receiver.received(path)
    assert len(requests) == 2
    assert {r.headers["webhook-id"] for r in requests} == {event_id}
    assert requests[0].body == requests[1].body
    # The killed attempt left no row (its worker died before recording); the re-sent one did.
    assert [a.response_status for a in delivery.attempts] == [200]
    # The lease (4 s) runs from the claim, which came after the publish began: the delivery
    # is not sent again before it ends. The worker did not renew it (the message waited
    # milliseconds, and an attempt starts only with more than its deadline of lease left).
    assert requests[1].arrived_at - published_at >= 4.0


@pytest.mark.slow
def test_two_dispatchers_and_two_workers_deliver_every_event_exactly_once(
    processes: Stack,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    processes.start_worker()
    processes.start_worker()
    processes.start_dispatcher()
    processes.start_dispatcher()
    new_endpoint(engine, settings, receiver.url(path), project)
    events = [publish_one(engine, settings, project, data={"i": i}) for i in range(200)]

    wait_for(lambda: len(receiver.received(path)) >= 200, timeout=60, what="200 deliveries")
    for event_id in events[-5:]:
        wait_for_state(engine, settings, event_id, "succeeded")
    counts = Counter(r.headers["webhook-id"] for r in receiver.received(path))
    assert set(counts) == set(events)
    assert max(counts.values()) == 1, [e for e, n in counts.items() if n > 1]
