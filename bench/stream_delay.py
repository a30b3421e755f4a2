"""How long an attempt takes to reach a client of ``GET /v1/webhook_attempts/stream``: from
the commit that records it to the moment the SSE frame is read, with 1 and 50 clients
connected to one `webhooks api` (real uvicorn), beside the least Postgres can do in the same
run (a bare ``pg_notify`` read by a bare ``LISTEN`` connection).

Attempts are recorded as a worker records them (`recording.settle_successes`, the one-statement
2xx path, which notifies in the same statement), paced at 20 a second; nothing is sent over
HTTP, so the figure is the stream's own delay.

Run alone: ``python -m bench.stream_delay`` (uses DATABASE_URL and a throwaway schema).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa

from bench.common import BIN, engine_for, isolated_schema, make_env, percentile, spread
from webhooks import clock
from webhooks.claiming import claim_due
from webhooks.delivery import DeliveryOutcome
from webhooks.endpoints import add_endpoint
from webhooks.keys import create_key
from webhooks.outbox import publish
from webhooks.recording import MadeAttempt, begin_attempt, settle_successes
from webhooks.settings import Settings

PROJECT = "proj_bench_stream"
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class Reader:
    """One SSE client in a thread: when (time.time()) each attempt id arrived."""

    def __init__(self, base_url: str, key: str) -> None:
        self.arrived: dict[int, float] = {}
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/v1/webhook_attempts/stream") as response:
                # Leaving the block closes the connection; the keep-alives (every 0.5 s here)
                # wake a reader waiting on a quiet stream, so it sees that it should stop.
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line == ": subscribed":
                        self.subscribed.set()
                    elif line.startswith("id: att_"):
                        self.arrived[int(line[8:])] = time.time()
        except httpx.HTTPError:
            pass

    def close(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._thread.join(timeout=10)
        self._client.close()


def _serve(env: dict[str, str], logfile: str) -> tuple[subprocess.Popen[bytes], str]:
    with open(logfile, "w") as out:
        process = subprocess.Popen(  # noqa: S603  our own CLI, from this venv
            [str(BIN / "webhooks"), "api", "--host", "127.0.0.1", "--port", "0"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(logfile) as log:
            match = _LISTENING.search(log.read())
        if match:
            return process, f"http://127.0.0.1:{match.group(1)}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"webhooks api did not start; see {logfile}")


def _record_one(engine: sa.Engine, settings: Settings) -> tuple[int, float]:
    """Publish, claim and record one 2xx as a worker does; (attempt id, commit time)."""
    with engine.begin() as conn:
        event_id = publish(
            conn, project_id=PROJECT, type="deployment.succeeded", data={}, settings=settings
        )
    with engine.begin() as conn:
        [claim] = claim_due(conn, settings, clock.now(), 1).claims
    assert claim.event_id == event_id
    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, clock.now())
    assert job is not None
    outcome = DeliveryOutcome(
        status=200, error_kind=None, error_message=None, duration=timedelta(milliseconds=1)
    )
    made = MadeAttempt(job, outcome, clock.now(), {})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        recorded = settle_successes(conn, settings, [made], clock.now())
        committed = time.time()
        assert recorded
        attempt_id = conn.execute(
            sa.text(f'SELECT max(id) FROM "{settings.db_schema}".attempts WHERE event_id = :e'),
            {"e": event_id},
        ).fetchone()
    assert attempt_id is not None
    return int(attempt_id[0]), committed


def _bare_notify_delays(settings: Settings, count: int, pace: float) -> list[float]:
    """ms from a bare ``pg_notify`` (autocommit) to a bare LISTEN connection reading it."""
    conninfo = sa.make_url(settings.database_url).set(drivername="postgresql")
    url = conninfo.render_as_string(hide_password=False)
    delays: list[float] = []
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url, autocommit=True) as sender,
    ):
        listener.execute('LISTEN "bench_bare"')
        for _ in range(count):
            sender.execute("SELECT pg_notify('bench_bare', %s)", (repr(time.time()),))
            for note in listener.notifies(timeout=5, stop_after=1):
                delays.append((time.time() - float(note.payload)) * 1000)
            time.sleep(pace)
    return delays


def measure(
    runs: int = 3, attempts: int = 100, client_counts: tuple[int, ...] = (1, 50)
) -> dict[str, Any]:
    """Per-run p50/p99 ms for each client count and for the bare NOTIFY, as spreads."""
    pace = 0.05
    env = make_env(WEBHOOKS_API_ALLOW_HTTP="true", WEBHOOKS_API_STREAM_KEEPALIVE="0.5s")
    results: dict[str, Any] = {}
    with isolated_schema(env) as settings:
        engine = engine_for(settings)
        with engine.begin() as conn:
            add_endpoint(conn, settings, url="https://example.com/hook", project_id=PROJECT)
            _, key = create_key(conn, settings.db_schema, project_id=PROJECT, mode="live")
        logfile = os.path.join(tempfile.mkdtemp(prefix="bench-stream-"), "api.log")
        process, base_url = _serve(env, logfile)
        try:
            per: dict[str, dict[str, list[float]]] = {}
            for _ in range(runs):
                bare = _bare_notify_delays(settings, attempts, pace)
                per.setdefault("bare_notify", {}).setdefault("p50_ms", []).append(
                    percentile(bare, 50)
                )
                per["bare_notify"].setdefault("p99_ms", []).append(percentile(bare, 99))
                for clients in client_counts:
                    readers = [Reader(base_url, key) for _ in range(clients)]
                    for reader in readers:
                        reader.subscribed.wait(30)
                    sent = []
                    for _ in range(attempts):
                        sent.append(_record_one(engine, settings))
                        time.sleep(pace)
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline and not all(
                        len(r.arrived) >= attempts for r in readers
                    ):
                        time.sleep(0.05)
                    delays = [
                        (r.arrived[attempt_id] - committed) * 1000
                        for r in readers
                        for attempt_id, committed in sent
                        if attempt_id in r.arrived
                    ]
                    missing = attempts * clients - len(delays)
                    for reader in readers:
                        reader.close()
                    for reader in readers:
                        reader.join()
                    name = f"stream_c{clients}"
                    figures = per.setdefault(name, {})
                    figures.setdefault("p50_ms", []).append(percentile(delays, 50))
                    figures.setdefault("p99_ms", []).append(percentile(delays, 99))
                    figures.setdefault("missing", []).append(float(missing))
            for name, figures in per.items():
                results[name] = {k: spread(v) for k, v in figures.items()}
        finally:
            process.terminate()
            process.wait(timeout=30)
            engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_delay")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--attempts", type=int, default=100, help="attempts per run (100)")
    args = parser.parse_args()
    print(
        f"attempt stream delay, commit → SSE frame read, {args.attempts} attempts at 20/s per "
        f"run, {args.runs} runs (min/median/max of per-run p50 and p99)"
    )
    results = measure(runs=args.runs, attempts=args.attempts)
    bare = results["bare_notify"]
    for name, figure in results.items():
        p50, p99 = figure["p50_ms"], figure["p99_ms"]
        line = (
            f"  {name:>12}: p50 {p50['min']:.2f}/{p50['median']:.2f}/{p50['max']:.2f} ms, "
            f"p99 {p99['min']:.2f}/{p99['median']:.2f}/{p99['max']:.2f} ms"
        )
        if name != "bare_notify":
            line += (
                f"; {p50['median'] / bare['p50_ms']['median']:.1f}x the bare NOTIFY's p50; "
                f"missing {figure['missing']['max']:.0f} (worst run)"
            )
        print(line)
    worst = max(f["p99_ms"]["median"] for n, f in results.items() if n != "bare_notify")
    print(
        f"  target: under 1000 ms; worst median p99 {worst:.1f} ms: "
        + ("met" if worst < 1000 else "NOT met")
    )


if __name__ == "__main__":
    main()
