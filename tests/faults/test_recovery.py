"""A bulk recovery under kill -9, beside a black hole and a healthy endpoint (issue 12's proof).

2,000 deliveries to three endpoints of one project fail (the endpoints answer 500 and the
retry window is so short that one attempt spends it). The endpoints are then fixed, and an
operator starts a recovery of the project (`webhooks recover --no-wait --json`), while a
fourth endpoint of another project, a black hole that accepts connections and never answers,
and a fifth, healthy one receive steady scheduled traffic. Two dispatchers and two workers
carry it out and are all killed with SIGKILL twice mid-way, and started again. Then:

- the recovery ends ``done``, every one of the 2,000 deliveries has exactly one stored
  attempt with trigger ``replay`` (its one replay row, ``done``), and its event arrived at its
  endpoint; a webhook-id arrived more than once only where the earlier copies have no stored
  attempt and arrived before a killed worker was seen dead (a request cut by the kill);
- the black hole never had more connections open at once than its in-flight cap, counted at
  the receiver, and got no replay;
- every scheduled delivery to the healthy endpoint succeeded.

Printed, not asserted: the healthy endpoint's commit→arrival p50/p99 while the recovery ran,
beside the same figure measured earlier in the same test with the same traffic and no
recovery (`bench.recovery_fairness` measures the same thing without kills).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from tests.faults.conftest import MakeDeployment
from tests.faults.harness import ARRIVAL_SLACK_SECONDS, Deployment, Fault, _as_dict
from tests.support.cli import cli_ok
from tests.support.polling import wait_for
from tests.support.processes import Process
from tests.support.receivers import BlackHole, Request
from webhooks import clock
from webhooks.database import create_engine, sql
from webhooks.endpoints import add_endpoint
from webhooks.outbox import publish
from webhooks.recovery import Recovery, get_recovery

DELIVERIES = 2_000
# One event type per recovered endpoint, so each event makes exactly one delivery.
RECOVERED = (
    ("/a", "deployment.succeeded"),
    ("/b", "deployment.build.failed"),
    ("/c", "project.updated"),
)
CAP = 4  # WEBHOOKS_ENDPOINT_CONCURRENCY
CONCURRENCY = 12  # threads per worker: the black hole's cap, 3 recoveries' and the healthy one
HEALTHY_PER_SECOND = 20.0
BLACKHOLE_PER_SECOND = 3.0
BASELINE_SECONDS = 10.0
# The recovered endpoints answer a little slowly, so that a kill finds replays on the wire.
RECOVERED_DELAY_SECONDS = 0.03
KILLS_AT = (1 / 3, 2 / 3)  # of the recovery's replays sent


@dataclass
class Traffic:
    """Scheduled traffic in a thread: events to the healthy endpoint and to the black hole at
    a steady pace, each healthy event's commit time kept (``time.time()`` after the commit)."""

    deployment: Deployment
    healthy_project: str
    blackhole_project: str
    committed: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._error is not None:
            raise self._error

    def _publish(self, engine: sa.Engine, project: str, i: int) -> str:
        with engine.begin() as conn:
            return publish(
                conn, project_id=project, type="deployment.succeeded", data={"i": i},
                settings=self.deployment.settings,
            )  # fmt: skip

    def _run(self) -> None:
        engine = create_engine(self.deployment.settings, pool_size=1)
        interval = 1.0 / HEALTHY_PER_SECOND
        every = round(HEALTHY_PER_SECOND / BLACKHOLE_PER_SECOND)
        started = time.monotonic()
        try:
            for i in itertools.count():
                if self._stop.wait(max(0.0, started + i * interval - time.monotonic())):
                    return
                event_id = self._publish(engine, self.healthy_project, i)
                self.committed[event_id] = time.time()
                if i % every == 0:
                    self._publish(engine, self.blackhole_project, i)
        except BaseException as exc:  # raised again by stop(), in the test's thread
            self._error = exc
        finally:
            engine.dispose()


@dataclass(frozen=True)
class Endpoints:
    """The recovered endpoints by receiver path, the black hole and the healthy endpoint."""

    recovered: dict[str, str]
    blackhole: str
    healthy: str


@dataclass(frozen=True)
class RecoveryRun:
    """What the recovery phase did: the recovery as it ended, the kills, and when."""

    recovery: Recovery
    faults: list[Fault]
    baseline_from: float
    recovery_from: float
    recovery_until: float


@dataclass(frozen=True)
class Copies:
    """What arrived at the recovered endpoints while the recovery ran."""

    requests: int
    duplicates: int
    unrecorded: int
    torn: int


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank, as `bench.common` computes it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def latencies_ms(
    traffic: Traffic, requests: Sequence[Request], since: float, until: float
) -> list[float]:
    """Commit→first arrival of the healthy events committed in [since, until)."""
    first: dict[str, float] = {}
    for request in requests:
        first.setdefault(request.webhook_id, request.arrived_at)
    return [
        (first[event_id] - at) * 1000
        for event_id, at in traffic.committed.items()
        if since <= at < until and event_id in first
    ]


def query(d: Deployment, statement: str, **params: object) -> list[Any]:
    with d.engine.connect() as conn:
        return list(conn.execute(sql(statement, d.settings.db_schema), params))


def recovery_now(d: Deployment, recovery_id: str) -> Recovery:
    with d.engine.connect() as conn:
        return get_recovery(conn, d.settings, recovery_id, clock.now())


def count_deliveries(d: Deployment, project: str, state: str) -> int:
    statement = "SELECT count(*) AS n FROM {s}.deliveries WHERE project_id = :p AND state = :state"
    return int(query(d, statement, p=project, state=state)[0].n)


def most_at_once(d: Deployment, endpoint_id: str) -> int:
    """The most stored attempts of an endpoint whose [start, start + duration) overlap."""
    rows = query(
        d,
        "SELECT started_at, duration_ms FROM {s}.attempts WHERE endpoint_id = :id",
        id=endpoint_id,
    )
    edges = sorted(
        [(r.started_at.timestamp(), 1) for r in rows]
        + [(r.started_at.timestamp() + r.duration_ms / 1000, -1) for r in rows]
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def start_processes(d: Deployment, extra_env: dict[str, str] | None = None) -> list[Process]:
    workers = [d.stack.start_worker(CONCURRENCY, extra_env) for _ in range(2)]
    return [*workers, d.stack.start_dispatcher(extra_env), d.stack.start_dispatcher(extra_env)]


def kill_all(processes: list[Process], what: str) -> Fault:
    """SIGKILL every process at once: a fault that may cut the workers' attempts on the wire."""
    killed_at = time.time()
    for process in processes:
        process.signal(signal.SIGKILL)
    for process in processes:
        process.popen.wait(5)
    return Fault(
        what, killed_at, loses_records=True, in_flight_bound=2 * CONCURRENCY, done_at=time.time()
    )


def add_endpoints(d: Deployment, blackhole: BlackHole) -> Endpoints:
    """Three endpoints of the project to recover, answering 500 for now (the outage); the
    black hole and the healthy endpoint, each in a project of its own."""
    recovered = {}
    with d.engine.begin() as conn:
        for path, event_type in RECOVERED:
            endpoint, _ = add_endpoint(
                conn, d.settings, url=d.receiver.url(path), project_id=d.project,
                event_types=[event_type],
            )  # fmt: skip
            recovered[path] = endpoint.id
            d.receiver.answer(path, 500)
        void, _ = add_endpoint(
            conn, d.settings, url=blackhole.url("/void"), project_id=d.project + "bh"
        )
        healthy, _ = add_endpoint(
            conn, d.settings, url=d.receiver.url("/healthy"), project_id=d.project + "ok"
        )
    return Endpoints(recovered, void.id, healthy.id)


def seed_outage(d: Deployment) -> dict[str, str]:
    """Publish the events whose deliveries fail, and wait until all of them have: a retry
    window of one second is spent by the first attempt. Returns event id → receiver path."""
    seeding = start_processes(d, {"WEBHOOKS_RETRY_WINDOW": "1s"})
    event_path: dict[str, str] = {}
    for start in range(0, DELIVERIES, 100):
        with d.engine.begin() as conn:
            for i in range(start, min(start + 100, DELIVERIES)):
                path, event_type = RECOVERED[i % len(RECOVERED)]
                event_id = publish(
                    conn, project_id=d.project, type=event_type, data={"i": i},
                    settings=d.settings,
                )  # fmt: skip
                event_path[event_id] = path
    wait_for(
        lambda: count_deliveries(d, d.project, "failed") == DELIVERIES,
        timeout=120,
        interval=0.5,
        what=f"{DELIVERIES} deliveries to fail",
    )
    for process in seeding:
        process.stop()
    return event_path


def recover_under_kills(d: Deployment, traffic: Traffic) -> RecoveryRun:
    """Measure the baseline, then start the recovery as an operator would and kill every
    dispatcher and worker twice while it runs; return once it is done."""
    processes = start_processes(d)
    traffic.start()
    wait_for(
        lambda: any(r.path == "/healthy" for r in d.receiver.received()),
        timeout=30,
        what="the first healthy delivery",
    )
    baseline_from = time.time()
    time.sleep(BASELINE_SECONDS)  # a measured stretch of traffic, not a wait for an event
    recovery_from = time.time()
    created = cli_ok(
        d.env, "recover", "--project", d.project, "--since", "1h", "--no-wait", "--json"
    )
    assert created["state"] == "running" and created["total"] == DELIVERIES
    faults: list[Fault] = []
    for share in KILLS_AT:
        wait_for(
            lambda share=share: recovery_now(d, created["id"]).sent >= share * DELIVERIES,
            timeout=90,
            interval=0.05,
            what=f"{share:.0%} of the replays sent",
        )
        faults.append(kill_all(processes, f"everything killed at {share:.0%}"))
        processes = start_processes(d)
    done = wait_for(
        lambda: (r := recovery_now(d, created["id"])).state == "done" and r,
        timeout=120,
        interval=0.1,
        what="the recovery to be done",
    )
    return RecoveryRun(done, faults, baseline_from, recovery_from, time.time())


def check_replayed_once(
    d: Deployment, run: RecoveryRun, endpoints: Endpoints, event_path: dict[str, str]
) -> Copies:
    """Each delivery has one stored replay attempt; each copy that arrived is that attempt,
    or an earlier one that no attempt records and that a kill cut."""
    done = run.recovery
    assert (done.state, done.total, done.queued, done.sent) == ("done", *(DELIVERIES,) * 3)
    assert (done.succeeded, done.held) == (DELIVERIES, 0), f"{done.failed} replays failed"
    recovered = {
        row.id
        for row in query(d, "SELECT id FROM {s}.deliveries WHERE project_id = :p", p=d.project)
    }
    assert len(recovered) == DELIVERIES
    assert count_deliveries(d, d.project, "succeeded") == DELIVERIES
    replays = query(
        d, "SELECT delivery_id, state, outcome FROM {s}.replays WHERE recovery_id = :id",
        id=done.id,
    )  # fmt: skip
    assert sorted(r.delivery_id for r in replays) == sorted(recovered), "one replay each"
    assert {(r.state, r.outcome) for r in replays} == {("done", "succeeded")}
    rows = query(d, "SELECT delivery_id, trigger, request_headers FROM {s}.attempts")
    by_trigger = {
        trigger: Counter(r.delivery_id for r in rows if r.trigger == trigger)
        for trigger in ("scheduled", "replay")
    }
    assert {by_trigger["scheduled"][i] for i in recovered} == {1}, "one attempt in the outage"
    assert set(by_trigger["replay"]) == recovered, "replay attempts outside the recovery"
    again = {i: n for i, n in by_trigger["replay"].items() if n != 1}
    assert not again, f"deliveries replayed more than once: {list(again.items())[:5]}"

    # The receiver's side. A stored attempt is matched to the request it made by endpoint,
    # webhook-id, timestamp and signature (fresh on every attempt).
    stored = Counter()
    for row in rows:
        if row.trigger == "replay":
            h = _as_dict(row.request_headers)
            stored[h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]] += 1
    copies: dict[str, list[tuple[Request, bool]]] = defaultdict(list)
    paths = set(endpoints.recovered)
    requests = [r for r in d.receiver.received() if r.arrived_at >= run.recovery_from]
    assert {r.path for r in requests} <= {*paths, "/healthy"}
    for request in sorted((r for r in requests if r.path in paths), key=lambda r: r.arrived_at):
        assert event_path[request.webhook_id] == request.path, "an event at the wrong endpoint"
        h = request.headers
        key = (request.webhook_id, h["webhook-timestamp"], h["webhook-signature"])
        recorded = stored[key] > 0
        stored[key] -= recorded
        copies[request.webhook_id].append((request, recorded))
    assert set(copies) == set(event_path), "events of the recovery that never arrived"
    assert all(n == 0 for n in stored.values()), "stored replay attempts with no request"
    for webhook_id, sent in copies.items():
        # The last copy is the recorded one; any before it were cut by a kill.
        assert [recorded for _, recorded in sent] == [False] * (len(sent) - 1) + [True], (
            f"{webhook_id}: copies {[(r.arrived_at, recorded) for r, recorded in sent]}"
        )
    unrecorded = [r for sent in copies.values() for r, recorded in sent if not recorded]
    unexplained = [r for r in unrecorded if not any(f.may_have_lost(r) for f in run.faults)]
    assert not unexplained, (
        f"{len(unexplained)} copies arrived with no stored attempt and no kill to explain them: "
        f"{[(r.path, r.webhook_id, r.arrived_at) for r in unexplained[:5]]}"
    )
    torn = [r for r in d.receiver.torn() if r.arrived_at >= run.recovery_from]
    assert all(any(f.may_have_lost(r) for f in run.faults) for r in torn)
    assert len(unrecorded) + len(torn) <= sum(f.in_flight_bound for f in run.faults)
    arrived = sum(len(sent) for sent in copies.values())
    return Copies(arrived, arrived - len(copies), len(unrecorded), len(torn))


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_a_recovery_killed_twice_replays_each_delivery_once_and_a_black_hole_stays_capped(
    deploy: MakeDeployment, record_figure: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    d = deploy(
        WEBHOOKS_ENDPOINT_CONCURRENCY=str(CAP),
        # Batches of 100 events: the kills land between batches of the recovery, and in them.
        WEBHOOKS_RECOVERY_BATCH="100",
    )
    blackhole = BlackHole().start()
    try:
        endpoints = add_endpoints(d, blackhole)
        event_path = seed_outage(d)
        seeded_seconds = time.monotonic() - started
        for path in endpoints.recovered:  # the outage is over
            d.receiver.answer(path, 200)
            d.receiver.delay(path, RECOVERED_DELAY_SECONDS)
        traffic = Traffic(d, d.project + "ok", d.project + "bh")
        try:
            run = recover_under_kills(d, traffic)
            time.sleep(1.0)  # healthy events committed at the end get their moment to arrive
        finally:
            traffic.stop()
        wait_for(
            lambda: count_deliveries(d, d.project + "ok", "succeeded") == len(traffic.committed),
            timeout=30,
            what="every healthy delivery to succeed",
        )
        # Late copies (a killed worker's message delivered again) are seen before we judge.
        wait_for(lambda: not d.receiver.unanswered(), timeout=10, what="the receiver quiet")
        time.sleep(ARRIVAL_SLACK_SECONDS)

        copies = check_replayed_once(d, run, endpoints, event_path)

        # The black hole was held at its cap, never above it, and got none of the recovery.
        assert blackhole.peak() <= CAP, (
            f"{blackhole.peak()} connections open at once at the black hole (cap {CAP}) at "
            f"{blackhole.peak_at():.2f}, kills at {[round(f.at, 2) for f in run.faults]}; its "
            f"stored attempts overlap {most_at_once(d, endpoints.blackhole)} at most"
        )
        assert blackhole.peak() == CAP, "the black hole never reached its cap: nothing proved"
        assert not set(blackhole.webhook_ids()) & set(event_path), "the black hole got a replay"

        # The healthy endpoint's scheduled deliveries all succeeded (waited for above), each
        # arrived, and nothing but scheduled work went there.
        healthy = [r for r in d.receiver.received() if r.path == "/healthy"]
        assert {r.webhook_id for r in healthy} == set(traffic.committed)
        triggers = query(
            d, "SELECT DISTINCT trigger FROM {s}.attempts WHERE endpoint_id = :id",
            id=endpoints.healthy,
        )  # fmt: skip
        assert [row.trigger for row in triggers] == ["scheduled"]
    finally:
        blackhole.stop()
    report(run, copies, traffic, healthy, blackhole, record_figure, seeded_seconds, started)


def report(
    run: RecoveryRun,
    copies: Copies,
    traffic: Traffic,
    healthy: list[Request],
    blackhole: BlackHole,
    record_figure: Callable[[str, object], None],
    seeded_seconds: float,
    started: float,
) -> None:
    """Print the figures (``pytest -s``) and attach them to the test's JUnit record."""
    baseline = latencies_ms(traffic, healthy, run.baseline_from, run.recovery_from)
    during = latencies_ms(traffic, healthy, run.recovery_from, run.recovery_until)
    before_kill = latencies_ms(traffic, healthy, run.recovery_from, run.faults[0].at)
    p99 = percentile(during, 99)
    figures: dict[str, float] = {
        "deliveries_recovered": DELIVERIES,
        "seeding_seconds": round(seeded_seconds, 1),
        "recovery_seconds": round(run.recovery_until - run.recovery_from, 1),
        "requests_to_recovered_endpoints": copies.requests,
        "copies_cut_by_kills": copies.duplicates,
        "unrecorded_requests": copies.unrecorded,
        "torn_requests": copies.torn,
        "blackhole_peak_open": blackhole.peak(),
        "blackhole_connections": blackhole.connections(),
        "healthy_events": len(traffic.committed),
        "healthy_p50_ms_baseline": round(percentile(baseline, 50), 1),
        "healthy_p99_ms_baseline": round(percentile(baseline, 99), 1),
        "healthy_p50_ms_during_recovery": round(percentile(during, 50), 1),
        "healthy_p99_ms_during_recovery": round(p99, 1),
        "healthy_p99_ms_during_recovery_before_first_kill": round(percentile(before_kill, 99), 1),
        "healthy_p99_ratio_to_baseline": round(p99 / percentile(baseline, 99), 2),
    }
    run_seconds = time.monotonic() - started
    for key, value in {**figures, "run_seconds": round(run_seconds, 1)}.items():
        record_figure(key, value)
    f = figures
    print(
        f"\n[recovery under kill -9] {DELIVERIES} deliveries replayed once each in "
        f"{f['recovery_seconds']}s, 2 dispatchers and 2 workers killed twice; "
        f"{copies.requests} requests, copies cut by kills {copies.duplicates} (unrecorded "
        f"{copies.unrecorded}, torn {copies.torn}); black hole peak {blackhole.peak()} "
        f"connections open (cap {CAP}, {blackhole.connections()} in all)\n"
        f"    healthy commit→arrival p50/p99 ms: without the recovery "
        f"{f['healthy_p50_ms_baseline']}/{f['healthy_p99_ms_baseline']} (n={len(baseline)}); "
        f"during it {f['healthy_p50_ms_during_recovery']}/{f['healthy_p99_ms_during_recovery']} "
        f"(n={len(during)}, p99 {f['healthy_p99_ratio_to_baseline']}x, kills included); before "
        f"the first kill p99 {f['healthy_p99_ms_during_recovery_before_first_kill']} "
        f"(n={len(before_kill)}); seeding {f['seeding_seconds']}s, run {run_seconds:.0f}s"
    )
