"""Batches when there is a backlog: one task carries many attempts, which run at once, each
recorded as soon as it ends, each stored with its project and mode. Against the real
dispatcher and worker (8 threads), told the workers have only 2 free slots so that a
backlog of tens of deliveries goes out in batches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.support.polling import wait_for
from tests.support.receivers import Receiver
from webhooks.database import sql
from webhooks.endpoints import add_endpoint
from webhooks.outbox import publish
from webhooks.settings import Settings

pytestmark = [pytest.mark.usefixtures("stack"), pytest.mark.slow]

DEADLINE = 8.0
STACK_ENV = {
    "WEBHOOKS_WORKER_SLOTS": "2",
    "WEBHOOKS_BATCH_MAX": "10",
    "WEBHOOKS_TIMEOUT": f"{DEADLINE:.0f}s",
    "WEBHOOKS_LEASE": "20s",
}
WORKER_THREADS = 8  # tests.processes starts the worker with -c 8


def _publish_backlog(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, paths: list[str], n: int
) -> dict[str, str]:
    """Endpoints at ``paths``, then ``n`` events in one commit: one round claims them all."""
    endpoints = {}
    with engine.begin() as conn:
        for path in paths:
            endpoint, _ = add_endpoint(conn, settings, url=receiver.url(path), project_id=project)
            endpoints[endpoint.id] = path
    with engine.begin() as conn:
        for i in range(n):
            publish(
                conn, project_id=project, type="deployment.succeeded", data={"i": i},
                settings=settings,
            )  # fmt: skip
    return endpoints


def _rows(engine: Engine, settings: Settings, project: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sql(
                    "SELECT d.id, d.endpoint_id, d.state, d.attempt_count, d.updated_at "
                    "FROM {s}.deliveries d JOIN {s}.endpoints e ON e.id = d.endpoint_id "
                    "WHERE e.project_id = :p",
                    settings.db_schema,
                ),
                {"p": project},
            )
        )


def _attempts(engine: Engine, settings: Settings, project: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sql(
                    "SELECT delivery_id, endpoint_id, project_id, mode, number, response_status, "
                    "error_kind, started_at, duration_ms FROM {s}.attempts WHERE project_id = :p",
                    settings.db_schema,
                ),
                {"p": project},
            )
        )


def test_a_backlog_goes_out_in_batches_whose_attempts_run_at_once(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    paths = [f"/batch-{i}" for i in range(4)]
    for path in paths:
        receiver.delay(path, 1.0)
    _publish_backlog(engine, settings, receiver, project, paths, 10)  # 40 deliveries

    def all_succeeded() -> list[Any] | None:
        rows = _rows(engine, settings, project)
        return rows if len(rows) == 40 and all(r.state == "succeeded" for r in rows) else None

    rows = wait_for(all_succeeded, timeout=30, what="every delivery of the backlog to succeed")
    stored = _attempts(engine, settings, project)
    assert all(r.attempt_count == 1 for r in rows), [a for a in stored if a.number > 1]
    assert sorted(a.delivery_id for a in stored) == sorted(r.id for r in rows)
    assert {(a.project_id, a.mode, a.number, a.response_status) for a in stored} == {
        (project, "live", 1, 200)
    }
    # Each request took a second to answer: one attempt per worker thread at a time could
    # not have had more than 8 of them arrive within the first 0.8 s.
    arrivals = sorted(r.arrived_at for path in paths for r in receiver.received(path))
    assert len(arrivals) == 40
    together = [t for t in arrivals if t - arrivals[0] < 0.8]
    assert len(together) > WORKER_THREADS, arrivals


def test_a_black_hole_in_a_batch_delays_none_of_the_others(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    paths = ["/hang", "/quick-0", "/quick-1", "/quick-2"]
    endpoints = _publish_backlog(engine, settings, receiver, project, paths, 5)  # 20 deliveries
    holes = {endpoint for endpoint, path in endpoints.items() if path == "/hang"}

    def all_recorded() -> list[Any] | None:
        stored = _attempts(engine, settings, project)
        return stored if {a.delivery_id for a in stored} and len(stored) >= 20 else None

    wait_for(all_recorded, timeout=30, what="an attempt of every delivery")
    rows = _rows(engine, settings, project)
    stored = _attempts(engine, settings, project)
    quick = [r for r in rows if r.endpoint_id not in holes]
    assert len(quick) == 15 and all(r.state == "succeeded" for r in quick)
    timed_out = [a for a in stored if a.endpoint_id in holes]
    assert timed_out and all(a.error_kind == "timeout" for a in timed_out)
    # Every healthy attempt was recorded before the first black-holed one could end: none
    # waited on the deadline of an attempt that shared its task.
    first_deadline = min(a.started_at for a in timed_out) + timedelta(seconds=DEADLINE)
    assert all(r.updated_at < first_deadline for r in quick), (
        max(r.updated_at for r in quick),
        first_deadline,
    )
