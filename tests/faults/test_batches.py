"""A worker killed (kill -9) in the middle of batches: only the attempts in flight are sent
again, one lease later, with the same webhook-id and body; every attempt that was made and
answered before the kill is stored; nothing is lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import MakeDeployment
from tests.faults.harness import Fault, Ledger, publish_workload
from tests.support.polling import wait_for

EVENTS = 150
CONCURRENCY = 4
BATCH_MAX = 10
# Told the workers have 2 free slots: a backlog goes out in batches of up to BATCH_MAX.
BATCH_ENV = {
    "WEBHOOKS_WORKER_SLOTS": "2",
    "WEBHOOKS_BATCH_MAX": str(BATCH_MAX),
    "WEBHOOKS_ENDPOINT_CONCURRENCY": "20",
}


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_a_worker_killed_mid_batch_loses_only_its_in_flight_attempts_and_they_are_resent(
    deploy: MakeDeployment, record_figure: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    d = deploy(**BATCH_ENV)
    # A slow endpoint (0.3 s) keeps a batch's attempts waiting on responses when it dies.
    publish_workload(d, EVENTS, delay=0.3)
    worker = d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_dispatcher()
    total = len(d.expected_pairs())
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")
    # More requests waiting on their answer than the worker has threads: batches at work.
    wait_for(
        lambda: len(d.receiver.unanswered()) > CONCURRENCY,
        timeout=10,
        what="more attempts in flight than worker threads",
    )

    killed_at = time.time()
    worker.signal(signal.SIGKILL)  # the whole process group: no chance to record anything
    worker.popen.wait(5)
    dead_at = time.time()
    in_flight = d.receiver.unanswered(before=killed_at)
    d.stack.start_worker(concurrency=CONCURRENCY)

    kill = Fault(
        "worker killed mid-batch",
        killed_at,
        loses_records=True,
        in_flight_bound=CONCURRENCY * BATCH_MAX,
        done_at=dead_at,
    )
    ledger = Ledger(d)
    figures = ledger.settle([kill], timeout=60)
    figures.report(
        "worker kill -9 mid-batch", record_figure, run_seconds=time.monotonic() - started
    )
    # Ledger checked: every delivery succeeded, every request that arrived is a stored
    # attempt unless the kill explains it, re-sends carry the same webhook-id and body and
    # came only after a lost record, one lease later.
    assert len(in_flight) > CONCURRENCY
    lost = ledger.unrecorded(before=dead_at)
    assert all(r in lost for r in in_flight)
    assert figures.resent_after_lost_record == figures.unrecorded_requests
