"""What `publish()` costs the API: ms per call with 1 and 8 concurrent writers, beside what
the same writers pay for the least an outbox can do (one INSERT of the envelope in its own
transaction) and for the naive baseline's publish (INSERT, commit, then ``.delay()``).

Writers are processes, as API servers are (threads in one process would measure the GIL).
Each call is its own transaction to a project with 2 endpoints. The product is measured as
shipped (NOTIFY at commit) and with ``WEBHOOKS_NOTIFY=false``.

Two more figures (issue 15, the publish no longer writes a delivery per endpoint):

- ``endpoints``: publish p50 with 8 writers to a project of 1, 500 and 5,000 endpoints, each
  beside the bare one-row INSERT transaction of the same writers, measured in turns at every
  size (the machine is shared: the ratio of neighbours is the figure that means something);
- ``fan_out``: one event to 5,000 endpoints with a real worker, dispatcher and receiver: the
  time from the publisher's commit to the first, the median and the last of its 5,000
  arrivals (the expansion is one INSERT; the rest is the sending).

Run alone: ``python -m bench.publish_cost [--only cost|endpoints|fan_out]... [--runs N]``
(uses DATABASE_URL and CELERY_BROKER_URL, throwaway schemas, 3 runs); `python -m bench` runs
the first with everything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import secrets
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import (
    Processes,
    database_url,
    delete_queue,
    drop_schema,
    isolated_schema,
    make_env,
    percentile,
    spread,
    wait_until,
)
from webhooks.database import create_engine, migrate
from webhooks.endpoints import add_endpoint
from webhooks.outbox import build_envelope, publish
from webhooks.settings import Settings

CALLS_PER_WRITER = 400
RUNS = 3
ENDPOINT_COUNTS = (1, 500, 5_000)
FAN_OUT = 5_000
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


def _writer(
    mode: str, schema: str, calls: int, start_at: float, project: str = "proj_bench"
) -> list[float]:
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
                    project_id=project,
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


# Copies of one endpoint made by add_endpoint, whatever columns the schema has by now.
COPY_ENDPOINT = """
INSERT INTO {s}.endpoints
SELECT (json_populate_record(e, json_build_object('id', e.id || '_' || n))).*
FROM {s}.endpoints e, generate_series(1, :copies) n
WHERE e.id = :template
"""


def add_endpoints(
    settings: Settings, engine: sa.Engine, project: str, count: int, url: str
) -> None:
    """``count`` endpoints in ``project``: one made by `add_endpoint`, the rest its copies."""
    with engine.begin() as conn:
        template, _ = add_endpoint(conn, settings, url=url, project_id=project)
        conn.execute(
            sa.text(COPY_ENDPOINT.replace("{s}", f'"{settings.db_schema}"')),
            {"template": template.id, "copies": count - 1},
        )


def measure_by_endpoints(
    runs: int = RUNS,
    calls: int = CALLS_PER_WRITER,
    writers: int = 8,
    counts: tuple[int, ...] = ENDPOINT_COUNTS,
) -> dict[str, Any]:
    """Publish p50 beside the bare INSERT's, with ``writers`` writers, per endpoint count."""
    schema = f"bench_pubn_{secrets.token_hex(3)}"
    settings = _settings(schema, notify=True)
    migrate(settings)
    engine = create_engine(settings, pool_size=1)
    projects = {}
    for count in counts:
        projects[count] = f"proj_e{count}"
        add_endpoints(settings, engine, projects[count], count, "https://example.com/hook")
    engine.dispose()
    results: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(writers, mp_context=context) as pool:
            for count, project in projects.items():
                p50s: dict[str, list[float]] = {"limit": [], "product": []}
                for _ in range(runs):
                    for mode in p50s:  # in turns, so both see the same machine
                        start_at = time.time() + 1.0
                        futures = [
                            pool.submit(_writer, mode, schema, calls, start_at, project)
                            for _ in range(writers)
                        ]
                        p50s[mode].append(statistics.median(t for f in futures for t in f.result()))
                ratios = [p / b for p, b in zip(p50s["product"], p50s["limit"], strict=True)]
                results[f"e{count}"] = {
                    "endpoints": count,
                    "publish_p50_ms": spread(p50s["product"]),
                    "bare_insert_p50_ms": spread(p50s["limit"]),
                    "ratio": spread(ratios),
                }
    finally:
        drop_schema(schema)
    return results


def fan_out(endpoints: int = FAN_OUT, timeout: float = 600.0) -> dict[str, float]:
    """Commit → arrivals of one event to ``endpoints`` endpoints, through a real worker (32
    threads, as `bench.runs`), dispatcher and receiver (nginx when installed)."""
    import tempfile

    from bench.receivers import Receivers

    env = make_env()
    with Receivers() as receivers, isolated_schema(env) as settings:
        fast = receivers.fast()
        engine = create_engine(settings, pool_size=2)
        add_endpoints(settings, engine, "proj_fan", endpoints, f"{fast.url}/fan")
        add_endpoints(settings, engine, "proj_warm", 1, f"{fast.url}/warm")
        try:
            with Processes(Path(tempfile.gettempdir()), env) as procs:
                procs.celery_worker("workers", 32, "worker")
                procs.dispatcher()
                warm = _publish_at(engine, settings, "proj_warm")[0]
                wait_until(lambda: _arrived(fast, 0, warm) >= 1, timeout=60)
                offset = fast.offset()
                event_id, committed = _publish_at(engine, settings, "proj_fan")
                wait_until(
                    lambda: _arrived(fast, offset, event_id) >= endpoints,
                    timeout=timeout,
                    interval=0.25,
                )
                times = sorted(a.at for a in fast.arrivals(offset) if a.webhook_id == event_id)
        finally:
            engine.dispose()
    if not times:
        return {"endpoints": float(endpoints), "arrived": 0.0}
    return {
        "endpoints": float(endpoints),
        "arrived": float(len(times)),
        "first_ms": (times[0] - committed) * 1000,
        "median_ms": (statistics.median(times) - committed) * 1000,
        "last_ms": (times[-1] - committed) * 1000,
        "per_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan"),
    }


def _publish_at(engine: sa.Engine, settings: Settings, project: str) -> tuple[str, float]:
    with engine.begin() as conn:
        event_id = publish(
            conn, project_id=project, type="deployment.succeeded", data=DATA, settings=settings
        )
    return event_id, time.time()


def _arrived(receiver: Any, offset: int, event_id: str) -> int:
    return sum(1 for a in receiver.arrivals(offset) if a.webhook_id == event_id)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_cost")
    parser.add_argument(
        "--only", action="append", choices=("cost", "endpoints", "fan_out"), default=None
    )
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--calls", type=int, default=CALLS_PER_WRITER)
    args = parser.parse_args()
    only = set(args.only or ("cost", "endpoints", "fan_out"))
    os.environ.setdefault("BENCH_NAIVE_QUEUE", f"bench_naive_{secrets.token_hex(3)}")
    if "cost" in only:
        print(
            f"publish cost, {args.calls} calls per writer process, {args.runs} runs "
            "(min/median/max of per-run p50, and median p95)"
        )
        for name, figure in measure(runs=args.runs, calls=args.calls).items():
            p50, p95 = figure["p50_ms"], figure["p95_ms"]
            print(
                f"  {name:>18}: p50 {p50['min']:.2f}/{p50['median']:.2f}/{p50['max']:.2f} ms, "
                f"p95 {p95['median']:.2f} ms"
            )
    if "endpoints" in only:
        print(
            f"publish p50 with 8 writers by endpoints per project, beside a bare one-row INSERT "
            f"transaction, {args.calls} calls per writer, {args.runs} runs (min/median/max)"
        )
        for figure in measure_by_endpoints(runs=args.runs, calls=args.calls).values():
            pub, bare, ratio = (
                figure["publish_p50_ms"],
                figure["bare_insert_p50_ms"],
                figure["ratio"],
            )
            print(
                f"  {figure['endpoints']:>5} endpoints: publish {pub['min']:.2f}/"
                f"{pub['median']:.2f}/{pub['max']:.2f} ms, bare INSERT {bare['min']:.2f}/"
                f"{bare['median']:.2f}/{bare['max']:.2f} ms, ratio {ratio['min']:.2f}/"
                f"{ratio['median']:.2f}/{ratio['max']:.2f}"
            )
    if "fan_out" in only:
        figure = fan_out()
        print(
            f"one event to {int(figure['endpoints'])} endpoints: {int(figure['arrived'])} "
            f"arrived; commit → first {figure.get('first_ms', float('nan')):.0f} ms, median "
            f"{figure.get('median_ms', float('nan')):.0f} ms, last "
            f"{figure.get('last_ms', float('nan')):.0f} ms ({figure.get('per_s', float('nan')):.0f}"
            " arrivals/s)"
        )


if __name__ == "__main__":
    main()
