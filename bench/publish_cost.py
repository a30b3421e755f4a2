"""What `publish()` costs the API: ms per call with 1 and 8 concurrent writers, beside what
the same writers pay for the least an outbox can do (one INSERT of the envelope in its own
transaction) and for the naive baseline's publish (INSERT, commit, then ``.delay()``).

Writers are processes, as API servers are (threads in one process would measure the GIL).
Each call is its own transaction to a project with 2 endpoints. The product is measured as
shipped (NOTIFY at commit) and with ``WEBHOOKS_NOTIFY=false``.

Run alone: ``python -m bench.publish_cost`` (uses DATABASE_URL, a throwaway schema, 3 runs);
`python -m bench` runs it with everything else.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import secrets
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import sqlalchemy as sa

from bench.common import database_url, delete_queue, drop_schema, percentile, spread
from webhooks.database import create_engine, migrate
from webhooks.endpoints import add_endpoint
from webhooks.outbox import build_envelope, publish
from webhooks.settings import Settings

CALLS_PER_WRITER = 400
RUNS = 3
MODES = ("limit", "product", "product_poll", "naive")
DATA = {"deployment_id": "dep_x", "status": "succeeded"}

_engines: dict[str, Any] = {}


def _settings(schema: str, notify: bool) -> Settings:
    base = Settings.from_env(
        {
            **os.environ,
            "DATABASE_URL": database_url(),
            "WEBHOOKS_DB_SCHEMA": schema,
            "WEBHOOKS_ALLOW_HTTP": "true",
        }
    )
    return dataclasses.replace(base, notify=notify)


def _writer(mode: str, schema: str, calls: int, start_at: float) -> list[float]:
    """One writer process: ``calls`` publishes, each its own transaction; ms per call."""
    settings = _settings(schema, notify=mode != "product_poll")
    engine = _engines.get(schema)
    if engine is None:
        engine = _engines[schema] = create_engine(settings, pool_size=1)
    naive_engine = engine.execution_options(schema_translate_map={"naive": schema})

    def once(i: int) -> None:
        if mode == "limit":
            with engine.begin() as conn:
                event_id = f"evt_l{secrets.token_hex(8)}"
                conn.execute(
                    sa.text(
                        f'INSERT INTO "{schema}".events (id, project_id, type, payload, '
                        "created_at) VALUES (:id, 'proj_bench', 'deployment.succeeded', "
                        ":payload, now())"
                    ),
                    {
                        "id": event_id,
                        "payload": build_envelope(
                            event_id=event_id,
                            event_type="deployment.succeeded",
                            project_id="proj_bench",
                            data={**DATA, "i": i},
                            created_at="2026-01-01T00:00:00Z",
                        ),
                    },
                )
        elif mode == "naive":
            from bench import naive

            event_id = f"evt_n{secrets.token_hex(8)}"
            naive.publish(
                naive_engine,
                event_id=event_id,
                url="http://127.0.0.1:9/unused",
                payload={"id": event_id, "data": {**DATA, "i": i}},
            )
        else:
            with engine.begin() as conn:
                publish(
                    conn,
                    project_id="proj_bench",
                    type="deployment.succeeded",
                    data={**DATA, "i": i},
                    settings=settings,
                )

    for i in range(10):  # warm the connection and the statement caches
        once(i)
    time.sleep(max(0.0, start_at - time.time()))
    timings = []
    for i in range(calls):
        started = time.perf_counter()
        once(i)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def prepare(schema: str) -> Settings:
    """Migrate a throwaway schema with a project of 2 endpoints and the naive tables."""
    from bench import naive

    settings = _settings(schema, notify=True)
    migrate(settings)
    engine = create_engine(settings, pool_size=1)
    with engine.begin() as conn:
        for n in range(2):
            add_endpoint(conn, settings, url=f"https://example.com/{n}", project_id="proj_bench")
    naive.create_tables(engine, schema)
    engine.dispose()
    return settings


def measure(
    runs: int = RUNS, calls: int = CALLS_PER_WRITER, writer_counts: tuple[int, ...] = (1, 8)
) -> dict[str, Any]:
    """p50 and p95 ms per call, per mode and writer count, each as a spread over runs."""
    schema = f"bench_pub_{secrets.token_hex(3)}"
    prepare(schema)
    results: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max(writer_counts), mp_context=context) as pool:
            for writers in writer_counts:
                for mode in MODES:
                    p50s, p95s = [], []
                    for _ in range(runs):
                        start_at = time.time() + 1.0
                        futures = [
                            pool.submit(_writer, mode, schema, calls, start_at)
                            for _ in range(writers)
                        ]
                        timings = [t for f in futures for t in f.result()]
                        p50s.append(statistics.median(timings))
                        p95s.append(percentile(timings, 95))
                    results[f"{mode}_w{writers}"] = {"p50_ms": spread(p50s), "p95_ms": spread(p95s)}
    finally:
        drop_schema(schema)
        delete_queue(os.environ.get("BENCH_NAIVE_QUEUE", ""))
    return results


def main() -> None:
    os.environ.setdefault("BENCH_NAIVE_QUEUE", f"bench_naive_{secrets.token_hex(3)}")
    print(
        f"publish cost, {CALLS_PER_WRITER} calls per writer process, {RUNS} runs "
        "(min/median/max of per-run p50, and median p95)"
    )
    for name, figure in measure().items():
        p50, p95 = figure["p50_ms"], figure["p95_ms"]
        print(
            f"  {name:>18}: p50 {p50['min']:.2f}/{p50['median']:.2f}/{p50['max']:.2f} ms, "
            f"p95 {p95['median']:.2f} ms"
        )


if __name__ == "__main__":
    main()
