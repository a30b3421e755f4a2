"""What `publish()` costs the API: ms per call with 1 and 8 concurrent writers, with the
dispatcher wake-up by NOTIFY at commit and without it (polling only).

Run: ``python -m bench.publish_cost`` (uses DATABASE_URL, a throwaway schema, 3 runs each).
Each writer publishes in its own transaction to a project with 2 endpoints, as the API would.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import statistics
import threading
import time

import sqlalchemy as sa

from webhooks.database import create_engine, migrate
from webhooks.endpoints import add_endpoint
from webhooks.outbox import publish
from webhooks.settings import Settings

CALLS_PER_WRITER = 400
RUNS = 3


def one_run(settings: Settings, writers: int) -> list[float]:
    engine = create_engine(settings, pool_size=writers)
    timings: list[float] = []
    lock = threading.Lock()

    def writer() -> None:
        mine = []
        for i in range(CALLS_PER_WRITER):
            start = time.perf_counter()
            with engine.begin() as conn:
                publish(
                    conn,
                    project_id="proj_bench",
                    type="deployment.succeeded",
                    data={"i": i, "deployment_id": "dep_x"},
                    settings=settings,
                )
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            timings.extend(mine)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    return timings


def main() -> None:
    base = Settings.from_env(
        {
            **os.environ,
            "WEBHOOKS_DB_SCHEMA": f"bench_{secrets.token_hex(3)}",
            "WEBHOOKS_ALLOW_HTTP": "true",
        }
    )
    migrate(base)
    engine = create_engine(base)
    with engine.begin() as conn:
        for n in range(2):
            add_endpoint(conn, base, url=f"https://example.com/{n}", project_id="proj_bench")
    print(
        f"publish cost, {CALLS_PER_WRITER} calls per writer, {RUNS} runs (min/median/max of "
        "per-run medians, and p95)"
    )
    try:
        for notify in (False, True):
            settings = dataclasses.replace(base, notify=notify)
            for writers in (1, 8):
                medians, p95s = [], []
                for _ in range(RUNS):
                    t = sorted(one_run(settings, writers))
                    medians.append(statistics.median(t))
                    p95s.append(t[int(len(t) * 0.95)])
                label = "NOTIFY" if notify else "poll  "
                print(
                    f"  {label} writers={writers}: p50 {min(medians):.2f}/"
                    f"{statistics.median(medians):.2f}/{max(medians):.2f} ms, "
                    f"p95 {statistics.median(p95s):.2f} ms"
                )
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{base.db_schema}" CASCADE'))
        engine.dispose()


if __name__ == "__main__":
    main()
