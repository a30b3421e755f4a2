"""Dispatchers that die mid-batch, and several dispatchers and workers sharing the work."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import MakeDeployment
from tests.faults.harness import Fault, Ledger, publish_workload
from tests.support.polling import wait_for

EVENTS = 150
CONCURRENCY = 8


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_claims_of_a_dispatcher_killed_mid_batch_are_dispatched_again_by_its_successor(
    deploy: MakeDeployment, record_figure: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    # No per-endpoint cap in the way: the dispatcher claims a whole batch (200) in one
    # transaction and then sends 200 messages, which leaves time to kill it in between.
    d = deploy(WEBHOOKS_ENDPOINT_CONCURRENCY="1000")
    d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_worker(concurrency=CONCURRENCY)
    dispatcher = d.stack.start_dispatcher()
    ledger = Ledger(d)

    faults = []
    for _ in range(2):
        # One transaction, one notification: the dispatcher claims, commits, then sends.
        publish_workload(d, EVENTS // 2, chunk=EVENTS)
        wait_for(ledger.claimed, timeout=10, interval=0.002, what="a batch to be claimed")
        faults.append(Fault("dispatcher killed", time.time()))
        dispatcher.signal(signal.SIGKILL)
        dispatcher.popen.wait(5)
        dispatcher = d.stack.start_dispatcher()

    figures = ledger.settle(faults, timeout=60)
    figures.report("dispatcher kill -9", record_figure, run_seconds=time.monotonic() - started)
    # The dispatcher sends no HTTP request: a dead one costs time, never a record or a copy.
    assert figures.unrecorded_requests == 0
    assert figures.resent_after_lost_record == 0
    # The kills did land between a batch's commit and its last message: claims were orphaned
    # and their leases reaped by the successor.
    assert figures.leases_expired >= 1


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_two_dispatchers_and_three_workers_send_a_delivery_twice_only_after_a_lease_expiry(
    deploy: MakeDeployment, record_figure: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    # One attempt per task: a killed worker's threads bound what it had in flight.
    d = deploy(WEBHOOKS_WORKER_SLOTS="100000")
    workers = [d.stack.start_worker(concurrency=CONCURRENCY) for _ in range(3)]
    d.stack.start_dispatcher()
    d.stack.start_dispatcher()
    publish_workload(d, EVENTS, delay=0.1)
    total = len(d.expected_pairs())

    # One worker dies mid-run, so that some leases do expire and the exception is exercised.
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")
    killed_at = time.time()
    workers[0].signal(signal.SIGKILL)
    workers[0].popen.wait(5)
    kill = Fault(
        "one of three workers killed",
        killed_at,
        loses_records=True,
        in_flight_bound=CONCURRENCY,
        done_at=time.time(),
    )

    # The Ledger fails the test for any delivery sent again after a recorded success, or
    # sooner than one lease after a lost attempt: that would be a double claim.
    figures = Ledger(d).settle([kill], timeout=60)
    figures.report(
        "2 dispatchers, 3 workers", record_figure, run_seconds=time.monotonic() - started
    )
    record_figure("sent_twice_after_lease_expiry", figures.resent_after_lost_record)
    print(f"    sent twice after a lease expiry: {figures.resent_after_lost_record}")
    assert figures.duplicates == figures.resent_after_failure + figures.resent_after_lost_record
    assert figures.resent_after_lost_record == figures.unrecorded_requests
