"""Dispatcher claim time with 10 k vs 1 M rows of history.

History is what a busy deployment accumulates: settled deliveries, each with its event and
its attempt, inserted with ``generate_series`` (then ANALYZE, as autovacuum would). On top
of it, 200 deliveries are due now over 20 endpoints, and `claiming.claim_due` is timed
directly, in a transaction that is rolled back so the same rows are due at every repetition.

Run alone: ``python -m bench.claim_time``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import sqlalchemy as sa

from bench.common import engine_for, isolated_schema, make_env, say, spread
from webhooks import clock
from webhooks.claiming import claim_due
from webhooks.endpoints import add_endpoint
from webhooks.expansion import expand_events
from webhooks.outbox import publish

ENDPOINTS = 20
DUE = 200
CHUNK = 200_000

HISTORY = """
INSERT INTO {s}.events (id, project_id, type, payload, created_at)
SELECT 'evt_h' || g, 'proj_c' || (g % {n}), 'deployment.succeeded',
       '{{"id":"evt_h' || g || '","type":"deployment.succeeded","data":{{"deployment_id":"dep_'
       || g || '"}}}}',
       now() - make_interval(secs => g)
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g;
INSERT INTO {s}.deliveries (id, event_id, endpoint_id, project_id, state, attempt_count,
                            first_attempt_at, created_at, updated_at)
SELECT 'dlv_h' || g, 'evt_h' || g, (CAST(:endpoints AS text[]))[1 + g % {n}],
       'proj_c' || (g % {n}), 'succeeded', 1,
       now() - make_interval(secs => g), now() - make_interval(secs => g), now()
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g;
INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, project_id, mode, number,
                          trigger, started_at, duration_ms, request_url, request_headers,
                          response_status, response_headers, response_body)
SELECT 'dlv_h' || g, 'evt_h' || g, (CAST(:endpoints AS text[]))[1 + g % {n}],
       'proj_c' || (g % {n}), 'live', 1, 'scheduled',
       now() - make_interval(secs => g), 3, 'https://example.com/hooks',
       '{{"content-type": "application/json", "webhook-id": "evt"}}', 204, '{{}}', ''
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g;
"""


def _add_history(engine: sa.Engine, schema: str, endpoints: list[str], lo: int, hi: int) -> None:
    statement = HISTORY.format(s=f'"{schema}"', n=ENDPOINTS)
    for start in range(lo, hi + 1, CHUNK):
        end = min(hi, start + CHUNK - 1)
        with engine.begin() as conn:
            for part in statement.split(";"):
                if part.strip():
                    conn.execute(sa.text(part), {"lo": start, "hi": end, "endpoints": endpoints})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text(f'VACUUM ANALYZE "{schema}".events, "{schema}".deliveries, "{schema}".attempts')
        )


def _time_claims(engine: sa.Engine, settings: Any, repeats: int) -> float:
    """Median ms of ``repeats`` claims of the due batch (each rolled back)."""
    timings = []
    for _ in range(repeats):
        with engine.connect() as conn:
            tx = conn.begin()
            started = time.perf_counter()
            batch = claim_due(conn, settings, clock.now(), settings.dispatch_batch_size)
            timings.append((time.perf_counter() - started) * 1000)
            tx.rollback()
        assert len(batch.claims) == DUE, f"claimed {len(batch.claims)} of {DUE}"
    return statistics.median(timings)


def measure(
    small: int = 10_000, large: int = 1_000_000, runs: int = 3, repeats: int = 20
) -> dict[str, Any]:
    """Claim time (ms) over ``small`` and ``large`` rows of history, as spreads over runs."""
    env = make_env()
    out: dict[str, Any] = {"history_rows": {"small": small, "large": large}}
    with isolated_schema(env) as settings:
        engine = engine_for(settings)
        try:
            endpoints = []
            with engine.begin() as conn:
                for n in range(ENDPOINTS):
                    endpoint, _ = add_endpoint(
                        conn, settings, url=f"https://example.com/{n}", project_id=f"proj_c{n}"
                    )
                    endpoints.append(endpoint.id)
                published = [
                    publish(
                        conn,
                        project_id=f"proj_c{i % ENDPOINTS}",
                        type="deployment.succeeded",
                        data={"i": i},
                        settings=settings,
                    )
                    for i in range(DUE)
                ]
            # A dispatcher expands events into deliveries after their commit; none runs here.
            with engine.begin() as conn:
                expand_events(conn, settings, published)
            started = time.perf_counter()
            _add_history(engine, settings.db_schema, endpoints, 1, small)
            say(f"claim time: {small} rows of history in {time.perf_counter() - started:.1f}s")
            out["small_ms"] = spread([_time_claims(engine, settings, repeats) for _ in range(runs)])
            started = time.perf_counter()
            _add_history(engine, settings.db_schema, endpoints, small + 1, large)
            say(f"claim time: {large} rows of history in {time.perf_counter() - started:.1f}s")
            out["large_ms"] = spread([_time_claims(engine, settings, repeats) for _ in range(runs)])
        finally:
            engine.dispose()
    return out


def main() -> None:
    result = measure()
    s, big = result["small_ms"], result["large_ms"]
    print(
        f"claim_due of {DUE} due rows: {result['history_rows']['small']} rows of history "
        f"{s['min']:.2f}/{s['median']:.2f}/{s['max']:.2f} ms; "
        f"{result['history_rows']['large']} rows {big['min']:.2f}/{big['median']:.2f}/"
        f"{big['max']:.2f} ms; ratio {big['median'] / s['median']:.2f}"
    )


if __name__ == "__main__":
    main()
