"""The HTTP API's list pages: requests/s and latency with 1 M attempts stored, beside a bare
uvicorn "hello" route (`bench.hello_app`) served and measured in the same run as the limit,
and what a page costs with 1 M attempts vs 10 k (the same query, two schemas).

History (`bench.api_history`): deliveries over three large projects (60 %) and many small
ones, two attempts each, ~9 % failed. The key is a live key of the largest project
(``proj_big0``, a fifth of all attempts), so each request also pays the shared rate limit
(set high enough never to refuse). Routes:

- ``list``: ``GET /v1/webhook_attempts?limit=100``;
- ``filtered``: ``GET /v1/webhook_attempts?endpoint_id=proj_big0_ep3&status=failed&limit=100``;
- ``hello``: the bare route.

For each, a closed loop (`CONNECTIONS` keep-alive connections, each sending its next request
when the last is answered) for a fixed time gives the peak rate and its p50/p99; then an open
loop at half that rate (requests sent on a fixed schedule, latency counted from when each was
due, so a stall is not hidden) gives p99 at half of peak. The page cost is the median time of
one page asked for alone (one connection, one request at a time), and of the page's query
run directly, with 1 M and with 10 k attempts in the schema.

The client is a small asyncio HTTP/1.1 client in this process: cheaper per request than
httpx, but on a 2-core machine it competes with uvicorn and Postgres for the CPU, as they do
with each other; the hello route's rate is bounded by it too, which flatters the API's ratio
(the figure says what a client on the same machine sees).

Run alone: ``python -m bench.api_bench [--quick]`` (uses DATABASE_URL and throwaway schemas).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from bench.api_history import add_history, add_projects
from bench.common import BIN, ROOT, engine_for, isolated_schema, make_env, percentile, say, spread
from webhooks.keys import create_key
from webhooks.pages import Scope, list_attempts_page
from webhooks.settings import Settings

PROJECT = "proj_big0"
ENDPOINT = "proj_big0_ep3"
ROUTES = {
    "list": "/v1/webhook_attempts?limit=100",
    "filtered": f"/v1/webhook_attempts?endpoint_id={ENDPOINT}&status=failed&limit=100",
}
# The framework-only routes (`bench.hello_app.framework`) get the list's query string.
FRAMEWORK_QUERY = ROUTES["list"].split("?", 1)[1]
CONNECTIONS = 16
OPEN_LOOP_CONNECTIONS = 64
RESULTS_DIR = ROOT / "bench" / "results"
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Sizes:
    """How much history, and for how long each figure is measured."""

    large: int = 1_000_000  # attempts
    small: int = 10_000
    small_projects: int = 997
    seconds: float = 10.0
    page_samples: int = 200

    @classmethod
    def quick(cls) -> Sizes:
        """The CI smoke's: a few thousand rows, a second per figure."""
        return cls(large=20_000, small=2_000, small_projects=97, seconds=1.0, page_samples=20)


# -- a small HTTP/1.1 keep-alive client ----------------------------------------------------------


class Connection:
    """One keep-alive connection sending one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        """A connection to 127.0.0.1:``port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def ask(self, request: bytes) -> int:
        """Send ``request``, read the whole answer; return its status."""
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if match is None:
            raise RuntimeError(f"no content-length in {head[:200]!r}")
        await self.reader.readexactly(int(match.group(1)))
        return int(head[9:12])

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


def request_bytes(path: str, key: str | None) -> bytes:
    """A GET of ``path`` (with the bearer ``key``, if any)."""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


@dataclass
class Load:
    """What one loop measured."""

    latencies_ms: list[float]
    errors: int
    seconds: float

    @property
    def per_s(self) -> float:
        """Answered requests per second."""
        return len(self.latencies_ms) / self.seconds

    def figures(self) -> dict[str, float]:
        """Rate, p50, p99 and errors."""
        return {
            "per_s": self.per_s,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p99_ms": percentile(self.latencies_ms, 99),
            "errors": float(self.errors),
        }


async def closed_loop(port: int, request: bytes, connections: int, seconds: float) -> Load:
    """``connections`` clients asking back to back for ``seconds``."""
    opened = [await Connection.open(port) for _ in range(connections)]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(connection: Connection) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await connection.ask(request)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += status != 200

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in opened))
    elapsed = time.perf_counter() - began
    for connection in opened:
        connection.close()
    return Load(latencies, errors, elapsed)


async def open_loop(port: int, request: bytes, rate: float, seconds: float) -> Load:
    """Requests due at ``rate`` a second for ``seconds``; latency from when each was due (a
    request waiting for a free connection counts as waiting)."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(OPEN_LOOP_CONNECTIONS):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    errors = 0

    async def one(due: float) -> None:
        nonlocal errors
        connection = await pool.get()
        try:
            status = await connection.ask(request)
        finally:
            pool.put_nowait(connection)
        latencies.append((time.perf_counter() - due) * 1000)
        errors += status != 200

    began = time.perf_counter()
    tasks = []
    for n in range(int(rate * seconds)):
        due = began + n / rate
        pause = due - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    while not pool.empty():
        pool.get_nowait().close()
    return Load(latencies, errors, elapsed)


# -- the servers ---------------------------------------------------------------------------------


@contextmanager
def served(command: list[str], env: dict[str, str], logdir: str, name: str) -> Iterator[int]:
    """Run a uvicorn ``command``; yield the port it listens on; stop it."""
    logfile = os.path.join(logdir, f"{name}.log")
    with open(logfile, "w") as out:
        process = subprocess.Popen(  # noqa: S603  our own servers, from this venv
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(logfile) as log:
                match = _LISTENING.search(log.read())
            if match:
                break
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {logfile}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{name} did not start; see {logfile}")
        yield int(match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def api_command() -> list[str]:
    """`webhooks api` as an operator starts it, on a port of its choosing."""
    return [str(BIN / "webhooks"), "api", "--host", "127.0.0.1", "--port", "0"]


def hello_command(app: str = "app") -> list[str]:
    """The bare uvicorn hello app (or ``framework``), with the settings `webhooks api` gives
    uvicorn."""
    return [
        str(BIN / "python"),
        "-m",
        "uvicorn",
        f"bench.hello_app:{app}",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-access-log",
    ]


# -- the history ---------------------------------------------------------------------------------


@contextmanager
def schema_with(
    attempts: int, small_projects: int, one_project: bool = False
) -> Iterator[tuple[dict[str, str], str]]:
    """A throwaway schema holding ``attempts`` attempts; yields its env and a live key of the
    large project."""
    env = make_env(WEBHOOKS_API_ALLOW_HTTP="true", WEBHOOKS_API_RATE_LIMIT="1000000/s")
    with isolated_schema(env) as settings:
        engine = engine_for(settings)
        try:
            started = time.perf_counter()
            add_projects(engine, settings.db_schema, small_projects)
            add_history(
                engine,
                settings.db_schema,
                small_projects,
                1,
                attempts // 2,
                one_project=one_project,
            )
            say(f"api: {attempts} attempts stored in {time.perf_counter() - started:.0f}s")
            with engine.begin() as conn:
                _, key = create_key(conn, settings.db_schema, project_id=PROJECT, mode="live")
        finally:
            engine.dispose()
        yield env, key


def query_ms(settings: Settings, samples: int, **filters: Any) -> float:
    """Median ms of the attempt list's query for one page, run directly."""
    engine = engine_for(settings, pool_size=1)
    timings = []
    try:
        with engine.connect() as conn:
            for _ in range(samples):
                started = time.perf_counter()
                list_attempts_page(conn, settings, Scope(PROJECT, "live"), limit=100, **filters)
                timings.append((time.perf_counter() - started) * 1000)
    finally:
        engine.dispose()
    return statistics.median(timings)


# -- the measurement -----------------------------------------------------------------------------


def peak_load(port: int, request: bytes, seconds: float) -> Load:
    """The closed loop at its peak, after a warm-up."""
    asyncio.run(closed_loop(port, request, CONNECTIONS, min(seconds, 2.0)))
    return asyncio.run(closed_loop(port, request, CONNECTIONS, seconds))


def measure_rates(port: int, key: str | None, path: str, seconds: float) -> dict[str, float]:
    """Peak (closed loop) and p99 at half of it (open loop) of one route."""
    request = request_bytes(path, key)
    peak = peak_load(port, request, seconds)
    half = asyncio.run(open_loop(port, request, peak.per_s / 2, seconds))
    figures = peak.figures()
    figures.update({f"half_{k}": v for k, v in half.figures().items()})
    return figures


def page_ms(ports: tuple[int, int], keys: tuple[str, str], path: str, samples: int) -> list[float]:
    """Median ms of one page asked for alone, of each server, asked for in turn (so that the
    machine's changing load weighs on both alike)."""
    timings: list[list[float]] = [[], []]

    async def ask() -> None:
        connections = [await Connection.open(port) for port in ports]
        requests = [request_bytes(path, key) for key in keys]
        for sample in range(samples):
            for n in (0, 1) if sample % 2 else (1, 0):
                started = time.perf_counter()
                await connections[n].ask(requests[n])
                timings[n].append((time.perf_counter() - started) * 1000)
        for connection in connections:
            connection.close()

    asyncio.run(ask())
    return [statistics.median(t) for t in timings]


def measure(sizes: Sizes = Sizes(), runs: int = 3) -> dict[str, Any]:
    """Every figure, as spreads over ``runs``."""
    per: dict[str, list[float]] = {}
    logdir = tempfile.mkdtemp(prefix="bench-api-")
    with ExitStack() as stack:
        large_env, large_key = stack.enter_context(schema_with(sizes.large, sizes.small_projects))
        # All of it the large project's: its filtered pages are full (100 rows) there too.
        small_env, small_key = stack.enter_context(schema_with(sizes.small, 97, one_project=True))
        hello = stack.enter_context(served(hello_command(), {}, logdir, "hello"))
        framework = stack.enter_context(served(hello_command("framework"), {}, logdir, "framework"))
        large = stack.enter_context(served(api_command(), large_env, logdir, "api-large"))
        small = stack.enter_context(served(api_command(), small_env, logdir, "api-small"))
        for n in range(runs):
            say(f"api run {n + 1}/{runs}")
            for name, figures in (
                ("hello", measure_rates(hello, None, "/hello", sizes.seconds)),
                *(
                    (route, measure_rates(large, large_key, path, sizes.seconds))
                    for route, path in ROUTES.items()
                ),
            ):
                for figure, value in figures.items():
                    per.setdefault(f"{name}_{figure}", []).append(value)
            for kind in ("sync", "async"):
                request = request_bytes(f"/{kind}?{FRAMEWORK_QUERY}", None)
                for figure, value in peak_load(framework, request, sizes.seconds).figures().items():
                    per.setdefault(f"framework_{kind}_{figure}", []).append(value)
            for route, path in ROUTES.items():
                both = page_ms((large, small), (large_key, small_key), path, sizes.page_samples)
                for size, ms in zip(("large", "small"), both, strict=True):
                    per.setdefault(f"{route}_page_{size}_ms", []).append(ms)
            for size, env in (("large", large_env), ("small", small_env)):
                settings = Settings.from_env(env)
                per.setdefault(f"list_query_{size}_ms", []).append(
                    query_ms(settings, sizes.page_samples)
                )
                per.setdefault(f"filtered_query_{size}_ms", []).append(
                    query_ms(settings, sizes.page_samples, endpoint_id=ENDPOINT, status="failed")
                )
    results: dict[str, Any] = {k: spread(v) for k, v in per.items()}
    results["sizes"] = {"large": sizes.large, "small": sizes.small, "seconds": sizes.seconds}
    return results


def summary(results: dict[str, Any]) -> list[str]:
    """The figures against the issue's targets, one line each."""
    median = {k: v["median"] for k, v in results.items() if isinstance(v, dict) and "median" in v}
    hello = median["hello_per_s"]
    lines = [
        f"hello: {hello:.0f}/s, p50 {median['hello_p50_ms']:.2f} ms, "
        f"p99 {median['hello_p99_ms']:.2f} ms; "
        f"p99 at half rate {median['hello_half_p99_ms']:.2f} ms"
    ]
    lines.append(
        "FastAPI's own ceiling for the list's route shape (no database, no guard): "
        + ", ".join(
            f"{'async def' if kind == 'async' else 'def'} route "
            f"{median[f'framework_{kind}_per_s']:.0f}/s = "
            f"{100 * median[f'framework_{kind}_per_s'] / hello:.1f}% of hello"
            for kind in ("sync", "async")
        )
    )
    for route in ROUTES:
        rate, half_p99 = median[f"{route}_per_s"], median[f"{route}_half_p99_ms"]
        page = median[f"{route}_page_large_ms"] / median[f"{route}_page_small_ms"]
        query = median[f"{route}_query_large_ms"] / median[f"{route}_query_small_ms"]
        lines.append(
            f"{route}: {rate:.0f}/s = {100 * rate / hello:.1f}% of hello "
            f"({'met' if rate >= hello / 4 else 'NOT met'}: >= 25%), "
            f"p50 {median[f'{route}_p50_ms']:.1f} ms, p99 {median[f'{route}_p99_ms']:.1f} ms; "
            f"p99 at half of peak {half_p99:.1f} ms ({'met' if half_p99 <= 100 else 'NOT met'}: "
            f"<= 100 ms); page {median[f'{route}_page_large_ms']:.2f} ms with "
            f"{results['sizes']['large']} attempts vs {median[f'{route}_page_small_ms']:.2f} ms "
            f"with {results['sizes']['small']}: {page:.2f}x "
            f"({'met' if page <= 1.5 else 'NOT met'}: <= 1.5x); query alone "
            f"{median[f'{route}_query_large_ms']:.2f} vs {median[f'{route}_query_small_ms']:.2f} "
            f"ms: {query:.2f}x"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api_bench")
    parser.add_argument("--quick", action="store_true", help="a few thousand rows, 1 s a figure")
    parser.add_argument("--runs", type=int, help="default: 3, or 1 with --quick")
    parser.add_argument("--seconds", type=float, help="how long each rate is measured")
    args = parser.parse_args()
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.seconds:
        sizes = dataclasses.replace(sizes, seconds=args.seconds)
    results = measure(sizes, runs=args.runs or (1 if args.quick else 3))
    RESULTS_DIR.mkdir(exist_ok=True)
    path = (
        RESULTS_DIR / f"api-{'quick-' if args.quick else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.write_text(json.dumps(results, indent=2))
    for name, figure in results.items():
        if isinstance(figure, dict) and "median" in figure:
            print(f"  {name}: {figure['min']:.4g} / {figure['median']:.4g} / {figure['max']:.4g}")
    for line in summary(results):
        print(line)
    say(f"JSON: {path}")


if __name__ == "__main__":
    main()
