"""Broker loss: Redis forgets every message (FLUSHDB), or is down for 20 s and comes back
empty. Postgres holds the truth: every lost message costs one lease, nothing more."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.faults.conftest import MakeDeployment
from tests.faults.harness import Fault, Ledger, publish_workload
from tests.faults.servers import PrivateRedis
from tests.support.polling import wait_for

EVENTS = 150
CONCURRENCY = 8
# The broker's Redis is shared with other tests and people: FLUSHALL would wipe their
# queues too. This test gets a Redis database of its own (same server, database 13) and
# flushes only that one (FLUSHDB): for the workers and dispatcher it is the same loss.
FLUSHED_DB = 13
OUTAGE_SECONDS = 20.0


def with_database(url: str, number: int) -> str:
    """The same Redis server, another database number."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{number}"))


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_messages_lost_to_a_flushed_redis_are_dispatched_again_after_their_lease(
    deploy: MakeDeployment,
    service_urls: tuple[str, str],
    record_figure: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    if not service_urls[1].startswith("redis://"):
        pytest.skip("FLUSHDB is a Redis fault; the broker here is not Redis")
    broker_url = with_database(service_urls[1], FLUSHED_DB)
    # One message per claim, as before rounds travelled as one task: a queue of many small
    # messages is the one a flush must empty while some wait (batched, it is often empty).
    d = deploy(broker_url=broker_url, WEBHOOKS_WORKER_SLOTS="100000")
    d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_dispatcher()
    publish_workload(d, EVENTS, delay=0.1)
    total = len(d.expected_pairs())
    client = redis.Redis.from_url(broker_url)
    # Flush while messages wait in the queue (three endpoints' worth of claims, one worker).
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")
    wait_for(lambda: client.llen(d.settings.queue) > 0, timeout=10, what="queued messages")
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(d.settings.queue)
        pipe.flushdb()
        queued, _ = pipe.execute()
    flushed_at = time.time()
    client.close()

    figures = Ledger(d).settle([Fault("redis flushed", flushed_at)], timeout=60)
    figures.report("redis FLUSHDB", record_figure, run_seconds=time.monotonic() - started)
    record_figure("messages_flushed", queued)
    print(f"    messages flushed from the queue: {queued}")
    assert queued > 0
    # Each lost message's delivery came back through its lease; nothing was sent twice and
    # every request has its attempt (the attempts in flight finished and recorded).
    assert figures.leases_expired >= 1
    assert figures.unrecorded_requests == 0
    assert figures.resent_after_lost_record == 0


@pytest.mark.faults
@pytest.mark.timeout(150)
def test_deliveries_resume_after_redis_is_down_for_twenty_seconds_and_restarts_empty(
    private_redis: PrivateRedis,
    deploy: MakeDeployment,
    record_figure: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    d = deploy(broker_url=private_redis.url)
    d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_dispatcher()
    publish_workload(d, EVENTS, delay=0.1)
    total = len(d.expected_pairs())
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")

    stopped_at = time.time()
    private_redis.stop()
    ledger = Ledger(d)
    # Postgres is still there: what was in flight is answered and recorded during the outage.
    wait_for(
        lambda: not ledger.unrecorded(before=time.time()),
        timeout=10,
        what="attempts in flight to be recorded with the broker down",
    )
    # The outage itself is the fault being injected: it lasts a fixed time on purpose.
    time.sleep(max(0.0, stopped_at + OUTAGE_SECONDS - time.time()))
    arrived_during_outage = d.receiver.count()
    private_redis.start()  # same port, no data: every message of before is gone
    restarted_at = time.time()

    figures = ledger.settle([Fault("redis stopped", stopped_at)], timeout=90)
    figures.report("redis down 20 s", record_figure, run_seconds=time.monotonic() - started)
    first_after = min(
        (r.arrived_at for r in d.receiver.received() if r.arrived_at > restarted_at),
        default=None,
    )
    assert first_after is not None
    resumed = first_after - restarted_at
    record_figure("resumed_after_restart_seconds", round(resumed, 2))
    print(f"    first delivery {resumed:.1f}s after redis came back")
    assert d.receiver.count() > arrived_during_outage
    assert figures.unrecorded_requests == 0
    assert figures.resent_after_lost_record == 0
