"""Workers that die (kill -9), die while the receiver is still answering, or are stopped."""

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
# One attempt per task, so that the worker's threads bound what a kill can catch in flight
# (batches, and their bound, are tests/faults/test_batches.py).
SINGLES = {"WEBHOOKS_WORKER_SLOTS": "100000"}


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_deliveries_in_flight_in_a_killed_worker_are_sent_again_after_one_lease(
    deploy: MakeDeployment, record_figure: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    d = deploy(**SINGLES)
    worker = d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_dispatcher()
    # A slow endpoint (0.3 s) keeps the worker's threads waiting on responses when it dies.
    publish_workload(d, EVENTS, delay=0.3)
    total = len(d.expected_pairs())
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")
    wait_for(lambda: d.receiver.unanswered(), timeout=10, what="requests in flight")

    killed_at = time.time()
    worker.signal(signal.SIGKILL)  # the whole process group: no chance to record anything
    worker.popen.wait(5)
    dead_at = time.time()
    in_flight = d.receiver.unanswered(before=killed_at)
    d.stack.start_worker(concurrency=CONCURRENCY)

    kill = Fault(
        "worker killed", killed_at, loses_records=True, in_flight_bound=CONCURRENCY, done_at=dead_at
    )
    ledger = Ledger(d)
    figures = ledger.settle([kill], timeout=60)
    figures.report("worker kill -9", record_figure, run_seconds=time.monotonic() - started)
    # The kill caught requests waiting on their response: those went unrecorded, and each
    # was sent again, one lease later, with the same webhook-id and body (Ledger checks).
    assert in_flight
    lost = ledger.unrecorded(before=dead_at)
    assert all(r in lost for r in in_flight)
    assert figures.resent_after_lost_record == figures.unrecorded_requests


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_a_200_that_arrives_after_the_worker_died_is_sent_again_with_the_same_webhook_id(
    deploy: MakeDeployment, record_figure: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    # A longer deadline than the other tests: the held requests must still be waiting on
    # their response (not timed out) when the worker dies, even on a loaded machine.
    d = deploy(WEBHOOKS_TIMEOUT="4s", WEBHOOKS_LEASE="6s", **SINGLES)
    worker = d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_dispatcher()
    publish_workload(d, EVENTS, delay=0.05)
    total = len(d.expected_pairs())
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")

    d.receiver.hold("/all")
    wait_for(lambda: d.receiver.held() >= 1, timeout=5, what="a request to be held")
    # A few more threads get stuck on /all within a moment; no need to wait for them.
    with_more = time.monotonic() + 0.5
    while d.receiver.held() < 4 and time.monotonic() < with_more:
        time.sleep(0.02)
    killed_at = time.time()
    worker.signal(signal.SIGKILL)
    worker.popen.wait(5)
    dead_at = time.time()
    held = [r for r in d.receiver.unanswered(before=killed_at) if r.path == "/all"]
    d.receiver.release("/all")  # the 200s now go to sockets whose worker is dead
    d.stack.start_worker(concurrency=CONCURRENCY)

    kill = Fault(
        "worker killed", killed_at, loses_records=True, in_flight_bound=CONCURRENCY, done_at=dead_at
    )
    ledger = Ledger(d)
    figures = ledger.settle([kill], timeout=60)
    figures.report("200 after worker died", record_figure, run_seconds=time.monotonic() - started)
    assert held
    assert all(r.answered_at is not None and r.answered_at > killed_at for r in held)
    requests = d.receiver.received()
    for first in held:
        again = [
            r for r in requests
            if r.path == first.path and r.webhook_id == first.webhook_id
            and r.arrived_at > first.arrived_at
        ]  # fmt: skip
        assert again, f"{first.webhook_id} was answered 200 after its worker died, never re-sent"
        assert all(r.body == first.body for r in again)
    # The late 200 counts for nothing: no attempt was stored for it (its worker was dead).
    lost = ledger.unrecorded(before=dead_at)
    assert all(r in lost for r in held)


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_a_worker_stopped_with_sigterm_finishes_and_records_its_attempts_without_lease_expiry(
    deploy: MakeDeployment, record_figure: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    d = deploy()
    leaving = d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_dispatcher()
    publish_workload(d, EVENTS, delay=0.3)
    total = len(d.expected_pairs())
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")
    wait_for(lambda: d.receiver.unanswered(), timeout=10, what="requests in flight")

    stopped_at = time.time()
    leaving.signal(signal.SIGTERM)
    in_flight = d.receiver.unanswered(before=stopped_at)
    ledger = Ledger(d)
    # Every attempt in flight at the SIGTERM is answered (0.3 s) and recorded promptly: a
    # warm shutdown waits for it, no lease has to run out.
    wait_for(
        lambda: not ledger.unrecorded(before=stopped_at),
        timeout=2.0,
        what="the attempts in flight at SIGTERM to be recorded",
    )
    recorded_within = time.time() - stopped_at
    leaving.popen.wait(20)

    figures = ledger.settle([Fault("worker SIGTERM", stopped_at)], timeout=60)
    figures.report("worker SIGTERM", record_figure, run_seconds=time.monotonic() - started)
    record_figure("in_flight_at_sigterm", len(in_flight))
    record_figure("recorded_within_seconds", round(recorded_within, 2))
    print(f"    in flight at SIGTERM: {len(in_flight)}, recorded within {recorded_within:.2f}s")
    assert in_flight
    assert leaving.popen.returncode == 0, leaving.output()[-3000:]
    assert figures.unrecorded_requests == 0
    assert figures.leases_expired == 0, "a delivery waited for its lease after a clean stop"
    assert figures.resent_after_lost_record == 0
