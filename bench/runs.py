"""One run of each measurement: the limits, the naive baseline and the product.

Every run starts its own worker (and dispatcher) subprocesses on an isolated schema and
queue, and stops them by pid when it ends. Throughput is measured by draining a backlog:
N events are published with nothing consuming, then the consumers start, and the rate is
(distinct arrivals - 1) / (last arrival - first arrival) as the receiver logged them.
Latency is measured at a paced load: events published one per transaction at a fixed rate
while everything runs, from the moment the publisher's commit returned to the receiver's
logged arrival. Every paced run (no-op, naive, product) first sends `Config.warmup_events`
at the same pace and waits for them, so that one-time costs of a process that just started
(connections, imports, thread start-up) are not counted as latency.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis
import sqlalchemy as sa

from bench.common import (
    Processes,
    database_url,
    delete_queue,
    drop_schema,
    engine_for,
    isolated_schema,
    make_env,
    percentile,
    wait_until,
)
from bench.costs import CostMeter, wal_bytes_between, wal_lsn
from bench.receivers import Receiver
from webhooks.endpoints import add_endpoint
from webhooks.outbox import publish
from webhooks.settings import Settings, normalize_database_url

PROJECTS = 20  # one endpoint each; events round-robin over them
PAYLOAD = {"deployment_id": "dep_91c2", "status": "succeeded", "region": "eu-west-1"}


@dataclass
class Config:
    """The knobs of one bench invocation."""

    events: int = 10_000
    paced_events: int = 2_000
    concurrency: int = 32
    blackholed: int = 2  # of PROJECTS endpoints: 10 %
    rss_events: int = 20
    # Events sent before a paced run's measured ones, and waited for: the figures are the
    # steady state, not the first requests of a process that just started.
    warmup_events: int = 50
    logdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    drain_timeout: float = 600.0


@dataclass
class Outcome:
    """What one run measured."""

    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def rate(times: list[float]) -> float:
    """Arrivals per second from the first to the last."""
    if len(times) < 2:
        return float("nan")
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else float("nan")


def latency_figures(prefix: str, latencies_ms: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": percentile(latencies_ms, 50),
        f"{prefix}_p95_ms": percentile(latencies_ms, 95),
        f"{prefix}_p99_ms": percentile(latencies_ms, 99),
    }


def first_arrivals(receiver: Receiver, offset: int) -> dict[str, float]:
    """webhook-id → its first arrival time, from the receiver's log after ``offset``."""
    seen: dict[str, float] = {}
    for arrival in receiver.arrivals(offset):
        if arrival.webhook_id not in seen:
            seen[arrival.webhook_id] = arrival.at
    return seen


class Pacer:
    """Calls ``publish_one(i)`` for i in range(count) at ``per_second``, one thread."""

    def __init__(self, per_second: float, count: int) -> None:
        self.interval = 1.0 / per_second
        self.count = count

    def run(
        self, publish_one: Callable[[int], tuple[str, float]]
    ) -> tuple[dict[str, float], float]:
        committed: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(self.count):
            delay = start + i * self.interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            key, at = publish_one(i)
            committed[key] = at
        elapsed = time.perf_counter() - start
        achieved = self.count / elapsed if elapsed > 0 else float("nan")
        return committed, achieved


# --- the limits -------------------------------------------------------------------------


def raw_post_rate(receiver: Receiver, count: int) -> Outcome:
    """POSTs per second from one thread with one keep-alive `httpx.Client`."""
    body = json.dumps({"id": "evt_raw", "type": "deployment.succeeded", "data": PAYLOAD}).encode()
    proc = psutil.Process(receiver.process.pid)

    def receiver_cpu() -> float:
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
        return total

    with httpx.Client(trust_env=False) as client:
        for _ in range(50):  # warm the connection
            client.post(f"{receiver.url}/raw", content=body)
        cpu_before = receiver_cpu()
        started = time.perf_counter()
        for _ in range(count):
            client.post(
                f"{receiver.url}/raw",
                content=body,
                headers={"content-type": "application/json", "webhook-id": "raw"},
            )
        elapsed = time.perf_counter() - started
        cpu = receiver_cpu() - cpu_before
    return Outcome(
        {
            "raw_post_per_s": count / elapsed,
            "receiver_cpu_us_per_request": cpu / count * 1e6,
        }
    )


def noop_run(config: Config, per_second: float | None, count: int) -> Outcome:
    """Celery's own rate (``per_second=None``: drain a backlog) or hop latency (paced)."""
    from bench import noop_app

    queue = noop_app.app.conf.task_default_queue
    key = f"bench:noop:{secrets.token_hex(4)}"
    client = redis.Redis.from_url(noop_app.app.conf.broker_url)
    delete_queue(queue)
    env = make_env(BENCH_NOOP_QUEUE=queue)
    try:
        with Processes(config.logdir, env) as procs, noop_app.app.producer_or_acquire() as prod:
            if per_second is None:
                for _ in range(count):
                    noop_app.noop.apply_async((key, time.time()), producer=prod)
                procs.celery_worker("bench.noop_app", config.concurrency, "noop")
            else:
                procs.celery_worker("bench.noop_app", config.concurrency, "noop")
                warm_key = f"{key}:warm"

                def warm(i: int) -> tuple[str, float]:
                    noop_app.noop.apply_async((warm_key, time.time()), producer=prod)
                    return str(i), time.time()

                Pacer(per_second, config.warmup_events).run(warm)
                wait_until(lambda: client.llen(warm_key) >= config.warmup_events, timeout=60)
                client.delete(warm_key)

                def send(i: int) -> tuple[str, float]:
                    now = time.time()
                    noop_app.noop.apply_async((key, now), producer=prod)
                    return str(i), now

                Pacer(per_second, count).run(send)
            done = wait_until(lambda: client.llen(key) >= count, timeout=config.drain_timeout)
            rows = [line.decode().split() for line in client.lrange(key, 0, -1)]
    finally:
        client.delete(key)
        client.close()
        delete_queue(queue)
    ran = [float(r[1]) for r in rows]
    out = Outcome({"completed": float(len(rows))})
    if not done:
        out.notes.append(f"noop: only {len(rows)} of {count} ran before the deadline")
    if per_second is None:
        out.figures["noop_per_s"] = rate(ran)
    else:
        out.figures.update(
            latency_figures("noop", [(float(r[1]) - float(r[0])) * 1000 for r in rows])
        )
    return out


# --- the naive baseline -----------------------------------------------------------------


def _naive_env() -> tuple[dict[str, str], str]:
    schema = f"bench_naive_{secrets.token_hex(4)}"
    from bench import naive

    return (
        make_env(BENCH_NAIVE_SCHEMA=schema, BENCH_NAIVE_QUEUE=naive.app.conf.task_default_queue),
        schema,
    )


def naive_run(
    config: Config,
    fast: Receiver,
    per_second: float | None,
    count: int,
    url_path: str = "/naive",
    receiver: Receiver | None = None,
    measure_rss: bool = False,
) -> Outcome:
    """The baseline: drain a backlog (``per_second=None``) or paced latency."""
    from bench import naive

    env, schema = _naive_env()
    target = receiver or fast
    engine = sa.create_engine(normalize_database_url(database_url())).execution_options(
        schema_translate_map={"naive": schema}
    )
    naive.create_tables(engine, schema)
    queue = naive.app.conf.task_default_queue
    delete_queue(queue)
    offset = target.offset()
    out = Outcome()
    url = f"{target.url}{url_path}"

    def publish_one(i: int) -> tuple[str, float]:
        event_id = f"evt_naive_{i}_{secrets.token_hex(3)}"
        payload = {"id": event_id, "type": "deployment.succeeded", "data": PAYLOAD}
        return event_id, naive.publish(engine, event_id=event_id, url=url, payload=payload)

    def stored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        f'SELECT count(DISTINCT event_id) FROM "{schema}".naive_attempts '
                        "WHERE status BETWEEN 200 AND 299"
                    )
                ).scalar_one()
            )

    try:
        with Processes(config.logdir, env) as procs:
            if per_second is None:
                committed = dict(publish_one(i) for i in range(count))
                worker = procs.celery_worker("bench.naive", config.concurrency, "naive")
            else:
                worker = procs.celery_worker("bench.naive", config.concurrency, "naive")
                if measure_rss:
                    time.sleep(1.0)
                    out.figures["rss_before_mb"] = worker.rss_bytes() / 2**20
                else:
                    warm = config.warmup_events // 5  # the naive design runs ~30/s
                    Pacer(per_second, warm).run(lambda i: publish_one(-1 - i))
                    _wait_stalling(stored, warm, 120, stall=35.0)
                    baseline_stored = stored()
                committed, achieved = Pacer(per_second, count).run(publish_one)
                out.figures["paced_per_s"] = achieved
            if per_second is not None and not measure_rss:
                already = baseline_stored

                def measured() -> int:
                    return stored() - already

                done = _wait_stalling(measured, count, config.drain_timeout, stall=35.0)
                n_stored = measured()
            else:
                done = _wait_stalling(stored, count, config.drain_timeout, stall=35.0)
                n_stored = stored()
            if measure_rss:
                time.sleep(1.0)
                out.figures["rss_after_mb"] = worker.rss_bytes() / 2**20
            arrived = {k: v for k, v in first_arrivals(target, offset).items() if k in committed}
    finally:
        engine.dispose()
        drop_schema(schema)
        delete_queue(queue)
    with_attempt = n_stored
    out.figures.update(
        {
            "events": float(count),
            "arrived": float(len(arrived)),
            "lost": float(count - len(arrived)),
            "arrived_not_stored": float(max(0, len(arrived) - with_attempt)),
        }
    )
    if not done:
        out.notes.append(f"naive: {with_attempt} of {count} stored before it stalled")
    if per_second is None:
        out.figures["naive_per_s"] = rate(list(arrived.values()))
    else:
        out.figures.update(
            latency_figures("naive", [(arrived[k] - committed[k]) * 1000 for k in arrived])
        )
    return out


def _wait_stalling(progress: Callable[[], int], target: int, timeout: float, stall: float) -> bool:
    """Wait until ``progress()`` reaches ``target``, giving up after ``stall`` s without change."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_value = progress()
        if now_value >= target:
            return True
        if now_value != last:
            last, last_change = now_value, time.monotonic()
        elif time.monotonic() - last_change > stall:
            return False
        time.sleep(0.25)
    return False


# --- the product ------------------------------------------------------------------------


@dataclass
class Deployment:
    """A product deployment for one run: schema, endpoints and which of them are healthy."""

    env: dict[str, str]
    settings: Settings
    engine: sa.Engine
    projects: list[str]
    healthy: set[str]  # project ids whose endpoint is the fast receiver


def _endpoints(
    settings: Settings, engine: sa.Engine, urls: list[str], project_prefix: str
) -> list[str]:
    projects = []
    with engine.begin() as conn:
        for n, url in enumerate(urls):
            project = f"{project_prefix}{n}"
            add_endpoint(conn, settings, url=url, project_id=project)
            projects.append(project)
    return projects


def _publish_backlog(dep: Deployment, count: int) -> dict[str, float]:
    committed: dict[str, float] = {}
    batch = 100
    for start in range(0, count, batch):
        with dep.engine.begin() as conn:
            ids = [
                publish(
                    conn,
                    project_id=dep.projects[i % len(dep.projects)],
                    type="deployment.succeeded",
                    data={**PAYLOAD, "n": i},
                    settings=dep.settings,
                )
                for i in range(start, min(count, start + batch))
            ]
        now = time.time()
        committed.update((event_id, now) for event_id in ids)
    return committed


STATES = """
SELECT e.project_id, d.state, count(*) AS n,
       count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM {s}.attempts a
                                          WHERE a.delivery_id = d.id)) AS never_attempted
FROM {s}.deliveries d JOIN {s}.endpoints e ON e.id = d.endpoint_id
GROUP BY e.project_id, d.state
"""


def _states(dep: Deployment) -> dict[str, dict[str, int]]:
    """Deliveries by health (healthy / blackholed) and state, plus never-attempted counts."""
    out: dict[str, dict[str, int]] = {"healthy": {}, "blackholed": {}}
    query = STATES.replace("{s}", f'"{dep.settings.db_schema}"')
    with dep.engine.connect() as conn:
        for row in conn.execute(sa.text(query)):
            group = out["healthy" if row.project_id in dep.healthy else "blackholed"]
            group[row.state] = group.get(row.state, 0) + int(row.n)
            group["never_attempted"] = group.get("never_attempted", 0) + int(row.never_attempted)
    return out


def _healthy_succeeded(dep: Deployment) -> int:
    query = (
        'SELECT count(*) FROM "{s}".deliveries d JOIN "{s}".endpoints e ON e.id = d.endpoint_id '
        "WHERE d.state = 'succeeded' AND e.project_id = ANY (:p)"
    ).replace('"{s}"', f'"{dep.settings.db_schema}"')
    with dep.engine.connect() as conn:
        return int(conn.execute(sa.text(query), {"p": sorted(dep.healthy)}).scalar_one())


def _attempts_stored(dep: Deployment) -> int:
    with dep.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(f'SELECT count(*) FROM "{dep.settings.db_schema}".attempts')
            ).scalar_one()
        )


def product_run(
    config: Config,
    fast: Receiver,
    blackhole: Receiver | None,
    per_second: float | None,
    count: int,
) -> Outcome:
    """publish() → dispatcher → worker → receiver: drain a backlog, or paced latency.

    With ``blackhole``, `Config.blackholed` of the `PROJECTS` endpoints point at it.
    """
    env = make_env()
    out = Outcome()
    n_black = config.blackholed if blackhole is not None else 0
    urls = [
        f"{blackhole.url}/bh/{n}" if blackhole is not None and n < n_black else f"{fast.url}/p/{n}"
        for n in range(PROJECTS)
    ]
    with isolated_schema(env) as settings:
        engine = engine_for(settings)
        projects = _endpoints(settings, engine, urls, f"proj_b{secrets.token_hex(2)}_")
        dep = Deployment(env, settings, engine, projects, set(projects[n_black:]))
        # Per-delivery costs in the clean drain only: there every attempt is one delivery.
        meter = CostMeter(engine) if per_second is None and blackhole is None else None
        healthy_events = count - sum(
            1 for i in range(count) if projects[i % PROJECTS] not in dep.healthy
        )
        warm = 0 if per_second is None else config.warmup_events
        healthy_total = healthy_events + warm  # every warm-up event goes to a healthy endpoint
        offset = fast.offset()
        drain_started, publish_wal = time.monotonic(), 0.0
        try:
            with Processes(config.logdir, env) as procs:
                if per_second is None:
                    wal_at_publish = wal_lsn(engine)
                    committed = _publish_backlog(dep, count)
                    publish_wal = wal_bytes_between(engine, wal_at_publish, wal_lsn(engine))
                    worker = procs.celery_worker("workers", config.concurrency, "worker")
                    if meter is not None:
                        meter.add("worker", worker)
                        meter.start()
                    dispatcher = procs.dispatcher()
                    drain_started = time.monotonic()
                    if meter is not None:
                        meter.add("dispatcher", dispatcher)
                else:
                    procs.celery_worker("workers", config.concurrency, "worker")
                    procs.dispatcher()
                    healthy_projects = [p for p in projects if p in dep.healthy]
                    for i in range(warm):
                        with engine.begin() as conn:
                            publish(
                                conn,
                                project_id=healthy_projects[i % len(healthy_projects)],
                                type="deployment.warmup",
                                data={**PAYLOAD, "n": -1 - i},
                                settings=settings,
                            )
                        time.sleep(1.0 / per_second)
                    wait_until(lambda: _healthy_succeeded(dep) >= warm, timeout=60, interval=0.1)

                    def publish_one(i: int) -> tuple[str, float]:
                        with engine.begin() as conn:
                            event_id = publish(
                                conn,
                                project_id=projects[i % PROJECTS],
                                type="deployment.succeeded",
                                data={**PAYLOAD, "n": i},
                                settings=settings,
                            )
                        return event_id, time.time()

                    committed, achieved = Pacer(per_second, count).run(publish_one)
                    out.figures["paced_per_s"] = achieved
                done = wait_until(
                    lambda: _healthy_succeeded(dep) >= healthy_total,
                    timeout=config.drain_timeout,
                    interval=0.25,
                )
                drained_in = time.monotonic() - drain_started if per_second is None else 0.0
                time.sleep(0.3)  # the last attempts' rows commit just after their arrival
                states = _states(dep)
                stored = _attempts_stored(dep)
                if meter is not None:
                    out.figures.update(meter.per_delivery(stored, drained_in))
                    out.figures["publish_wal_bytes_per_event"] = publish_wal / max(1, count)
        finally:
            engine.dispose()
    arrivals = {k: v for k, v in first_arrivals(fast, offset).items() if k in committed}
    healthy = states["healthy"]
    out.figures.update(
        {
            "events": float(count),
            "warmup_events": float(warm),
            "healthy_events": float(healthy_events),
            "healthy_arrived": float(len(arrivals)),
            "healthy_succeeded": float(healthy.get("succeeded", 0) - warm),
            "lost": float(healthy_total - healthy.get("succeeded", 0)),
            "never_attempted": float(healthy.get("never_attempted", 0)),
            "attempts_stored": float(stored),
        }
    )
    if n_black:
        black = states["blackholed"]
        out.figures["blackholed_deliveries"] = float(
            sum(black.get(s, 0) for s in ("pending", "delivering", "failed", "succeeded"))
        )
        out.figures["blackholed_held_unattempted"] = float(black.get("never_attempted", 0))
    if not done:
        out.notes.append(
            f"product: {healthy.get('succeeded', 0)} of {healthy_total} healthy deliveries "
            "succeeded before the deadline"
        )
    if per_second is None:
        out.figures["per_s"] = rate(list(arrivals.values()))
    else:
        out.figures.update(
            latency_figures("latency", [(arrivals[k] - committed[k]) * 1000 for k in arrivals])
        )
    return out


def product_rss(config: Config, fast: Receiver, big: Receiver) -> Outcome:
    """Worker RSS before and after deliveries whose responses are 50 MB each."""
    env = make_env()
    out = Outcome()
    with isolated_schema(env) as settings:
        engine = engine_for(settings)
        projects = _endpoints(
            settings,
            engine,
            [f"{fast.url}/warm", f"{big.url}/big"],
            f"proj_r{secrets.token_hex(2)}_",
        )
        dep = Deployment(env, settings, engine, projects, set(projects))

        def publish_to(project: str, n: int) -> None:
            with engine.begin() as conn:
                for i in range(n):
                    publish(
                        conn,
                        project_id=project,
                        type="deployment.succeeded",
                        data={**PAYLOAD, "n": i},
                        settings=settings,
                    )

        try:
            with Processes(config.logdir, env) as procs:
                worker = procs.celery_worker("workers", config.concurrency, "worker")
                procs.dispatcher()
                warm = 2 * config.concurrency
                publish_to(projects[0], warm)
                wait_until(lambda: _attempts_stored(dep) >= warm, timeout=60)
                time.sleep(1.0)
                out.figures["rss_before_mb"] = worker.rss_bytes() / 2**20
                publish_to(projects[1], config.rss_events)
                done = wait_until(
                    lambda: _attempts_stored(dep) >= warm + config.rss_events, timeout=300
                )
                time.sleep(1.0)
                out.figures["rss_after_mb"] = worker.rss_bytes() / 2**20
        finally:
            engine.dispose()
    out.figures["rss_growth_mb"] = out.figures["rss_after_mb"] - out.figures["rss_before_mb"]
    if not done:
        out.notes.append("product rss: not every 50 MB delivery was recorded in time")
    return out


def naive_rss(config: Config, fast: Receiver, big: Receiver) -> Outcome:
    """The baseline's worker RSS across the same 50 MB responses (it reads them whole)."""
    out = naive_run(
        config,
        fast,
        per_second=50.0,
        count=config.rss_events,
        url_path="/big",
        receiver=big,
        measure_rss=True,
    )
    out.figures["rss_growth_mb"] = out.figures["rss_after_mb"] - out.figures["rss_before_mb"]
    return out


__all__ = [
    "Config",
    "Outcome",
    "naive_rss",
    "naive_run",
    "noop_run",
    "product_rss",
    "product_run",
    "raw_post_rate",
]
