"""Postgres restarted mid-run: workers and dispatcher reconnect on their own, and an attempt
whose result could not be written while it was down is retried, not lost."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import MakeDeployment
from tests.faults.harness import Fault, Ledger, publish_workload
from tests.faults.servers import PrivatePostgres
from tests.support.polling import wait_for

EVENTS = 150
CONCURRENCY = 8
# How long Postgres stays down once the held answers went out: far less than a lease.
OUTAGE_SECONDS = 1.0


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_deliveries_survive_a_postgres_restart_and_every_request_keeps_its_attempt(
    private_postgres: PrivatePostgres,
    deploy: MakeDeployment,
    record_figure: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    # A Postgres of our own: restarting the machine's would break everyone else's tests. A
    # deadline long enough that the answers held across the stop do not time out first.
    d = deploy(database_url=private_postgres.url, WEBHOOKS_TIMEOUT="4s", WEBHOOKS_LEASE="8s")
    d.stack.start_worker(concurrency=CONCURRENCY)
    d.stack.start_dispatcher()
    publish_workload(d, EVENTS, delay=0.1)
    total = len(d.expected_pairs())
    wait_for(lambda: d.receiver.count() >= total // 3, timeout=60, what="a third delivered")

    # Hold some answers across the stop, so that their attempts try to record while Postgres
    # is down: that is the case "retried, not lost" is about.
    d.receiver.hold("/all")
    wait_for(lambda: d.receiver.held() >= 1, timeout=5, what="a request to be held")
    stopped_at = time.time()
    private_postgres.stop(mode="fast")  # pg_ctl stop -m fast: every connection is cut
    held = d.receiver.unanswered()
    d.receiver.release("/all")
    wait_for(lambda: all(r.answered_at for r in held), timeout=5, what="held answers to go")
    # The outage is the fault being injected: it lasts a fixed (short) time on purpose.
    time.sleep(OUTAGE_SECONDS)
    private_postgres.start()
    restarted_at = time.time()

    figures = Ledger(d).settle([Fault("postgres restarted", stopped_at)], timeout=60)
    figures.report("postgres restart", record_figure, run_seconds=time.monotonic() - started)
    record_figure("postgres_down_seconds", round(restarted_at - stopped_at, 2))
    record_figure("answered_while_down", len(held))
    print(f"    answered while down: {len(held)}; down {restarted_at - stopped_at:.1f}s")
    assert held
    # Postgres was down for far less than a lease: the README promises no duplicate then,
    # and every request that arrived must have its stored attempt.
    assert figures.unrecorded_requests == 0
    assert figures.resent_after_lost_record == 0
