"""What every benchmark shares: the servers' URLs, an isolated schema and queue per run,
subprocesses stopped by pid, percentiles, and polling with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import sqlalchemy as sa

from webhooks.database import create_engine, migrate
from webhooks.settings import Settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def database_url() -> str:
    """The Postgres every benchmark uses (`DATABASE_URL`, or the README's default)."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def broker_url() -> str:
    """The Redis broker every benchmark uses (`CELERY_BROKER_URL`, or the README's default)."""
    return os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL


def make_env(**overrides: str) -> dict[str, str]:
    """The environment of one isolated deployment: its own schema and queue (as the tests')."""
    tag = secrets.token_hex(4)
    env = {
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker_url(),
        "WEBHOOKS_DB_SCHEMA": f"bench_{tag}",
        "WEBHOOKS_QUEUE": f"bench_q_{tag}",
        "WEBHOOKS_ALLOWED_NETWORKS": "127.0.0.0/8",
        "WEBHOOKS_ALLOW_HTTP": "true",
    }
    env.update(overrides)
    return env


@contextlib.contextmanager
def isolated_schema(env: dict[str, str]) -> Iterator[Settings]:
    """Migrate the env's schema, yield its settings, then drop it and its queue."""
    settings = Settings.from_env(env)
    migrate(settings)
    try:
        yield settings
    finally:
        drop_schema(settings.db_schema)
        delete_queue(env.get("WEBHOOKS_QUEUE", ""))


def drop_schema(schema: str) -> None:
    """Drop a benchmark schema and everything in it."""
    engine = sa.create_engine(Settings.from_env({"DATABASE_URL": database_url()}).database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def delete_queue(queue: str) -> None:
    """Delete a Redis queue (and kombu's priority siblings) left by a run."""
    if not queue:
        return
    client = redis.Redis.from_url(broker_url())
    try:
        keys = [queue, *(f"{queue}\x06\x16{n}" for n in range(10))]
        client.delete(*keys)
    finally:
        client.close()


def engine_for(settings: Settings, pool_size: int = 4) -> sa.Engine:
    """An engine for the harness's own queries."""
    return create_engine(settings, pool_size=pool_size)


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return whether it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of one figure over runs."""
    clean = [v for v in values if v == v]  # drop NaN
    if not clean:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan"), "n": 0}
    return {
        "min": min(clean),
        "median": statistics.median(clean),
        "max": max(clean),
        "n": len(clean),
    }


@dataclass
class Process:
    """A subprocess started by the harness, in its own process group, stopped by its pid."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def rss_bytes(self) -> int:
        """Resident memory of the process (a threads-pool worker is one process)."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group we created for it, then SIGKILL it if it lingers."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of our own group, if any


@dataclass
class Processes:
    """The subprocesses of one run; `stop()` ends each of them by pid, newest first."""

    logdir: Path
    env: dict[str, str]
    started: list[Process] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], ready: str | None, timeout: float = 60) -> Process:
        log = self.logdir / f"{name}-{len(self.started)}-{secrets.token_hex(2)}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(  # noqa: S603 (our own programs, fixed argv)
                argv,
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.started.append(process)
        if ready is not None:
            ok = wait_until(
                lambda: ready in process.output() or not process.alive(),
                timeout=timeout,
                interval=0.1,
            )
            if not ok or not process.alive():
                raise RuntimeError(f"{name} did not start:\n{process.output()[-3000:]}")
        return process

    def celery_worker(self, app: str, concurrency: int, name: str = "worker") -> Process:
        """``celery -A app worker -P threads -c N``, as the Procfile starts ours."""
        return self.spawn(
            name,
            [
                str(BIN / "celery"),
                "-A",
                app,
                "worker",
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "-E",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
                "-n",
                f"{name}-{secrets.token_hex(3)}@%h",
            ],
            ready=" ready.",
        )

    def dispatcher(self) -> Process:
        return self.spawn(
            "dispatcher", [str(BIN / "webhooks"), "dispatcher"], ready="dispatcher.started"
        )

    def stop(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.started.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def say(message: str) -> None:
    """Progress on stderr (stdout is the summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
