"""A healthy endpoint's commit→arrival latency while a bulk recovery runs, beside the same
without the recovery, measured in the same run on the same processes.

One deployment, a worker and a dispatcher as shipped. A healthy endpoint (the fast receiver)
and a black hole, each in a project of its own, get paced scheduled traffic (one black-hole
event for every `BLACKHOLE_EVERY` healthy ones). A third project has `RECOVERED` endpoints
on the fast receiver whose deliveries all failed during an outage, seeded in SQL as
`bench.claim_time` seeds its history (published, then marked ``failed`` after one attempt),
since only the replays are measured. The healthy latency is measured for a stretch of paced
traffic without the recovery (the baseline), then for the same pace while a recovery of the
third project (`recovery.create_recovery`, what ``webhooks recover`` calls) replays the
backlog through the real pipeline. The latency is from the publisher's commit to the fast
receiver's logged arrival, as in `bench.runs`.

Run alone: ``python -m bench.recovery_fairness``.
"""

from __future__ import annotations

import itertools
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import Processes, engine_for, isolated_schema, make_env, say, spread, wait_until
from bench.receivers import Receiver, Receivers
from bench.runs import PAYLOAD, first_arrivals, latency_figures
from webhooks import clock
from webhooks.database import sql
from webhooks.endpoints import add_endpoint
from webhooks.expansion import expand_events
from webhooks.outbox import publish
from webhooks.recovery import RecoverySelection, create_recovery, get_recovery
from webhooks.settings import Settings

RECOVERED = 3  # endpoints of the recovered project
BLACKHOLE_EVERY = 10
WARMUP_EVENTS = 50

# The outage, as the recovery finds it: every delivery of the project failed once.
FAIL_DELIVERIES = """
UPDATE {s}.deliveries SET state = 'failed', attempt_count = 1, failed_attempts = 1,
    first_attempt_at = :now, next_attempt_at = NULL, updated_at = :now
WHERE project_id = :project_id
"""


def _seed_outage(engine: sa.Engine, settings: Settings, project: str, events: int) -> None:
    for start in range(0, events, 500):
        with engine.begin() as conn:
            published = [
                publish(
                    conn,
                    project_id=project,
                    type="deployment.succeeded",
                    data={**PAYLOAD, "n": i},
                    settings=settings,
                )
                for i in range(start, min(events, start + 500))
            ]
        # A dispatcher expands events into deliveries after their commit; none runs yet.
        with engine.begin() as conn:
            expand_events(conn, settings, published)
    with engine.begin() as conn:
        failed = conn.execute(
            sql(FAIL_DELIVERIES, settings.db_schema), {"now": clock.now(), "project_id": project}
        ).rowcount
    # Without deliveries to fail, the recovery would replay nothing and the figure be empty.
    assert failed == events * RECOVERED, f"failed {failed} of {events * RECOVERED} deliveries"


class _Traffic:
    """Paced scheduled traffic to the healthy endpoint and the black hole."""

    def __init__(self, engine: sa.Engine, settings: Settings, healthy: str, void: str) -> None:
        self.engine, self.settings = engine, settings
        self.healthy, self.void = healthy, void
        self.sent = 0

    def _publish(self, project: str) -> str:
        with self.engine.begin() as conn:
            return publish(
                conn,
                project_id=project,
                type="deployment.succeeded",
                data={**PAYLOAD, "n": self.sent},
                settings=self.settings,
            )

    def run(self, per_second: float, until: Callable[[], bool]) -> dict[str, float]:
        """Publish at ``per_second`` until ``until()`` is true; healthy id → commit time."""
        committed: dict[str, float] = {}
        start = time.perf_counter()
        for i in itertools.count():
            delay = start + i / per_second - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if until():
                break
            committed[self._publish(self.healthy)] = time.time()
            if self.sent % BLACKHOLE_EVERY == 0:
                self._publish(self.void)
            self.sent += 1
        return committed


def one_run(
    fast: Receiver,
    blackhole: Receiver,
    *,
    deliveries: int,
    per_second: float,
    baseline_events: int,
    concurrency: int,
    logdir: Path,
) -> dict[str, float]:
    """Baseline and during-recovery latency of the healthy endpoint, one deployment."""
    env = make_env()
    tag = secrets.token_hex(2)
    recovered, healthy, void = f"proj_rf{tag}_r", f"proj_rf{tag}_h", f"proj_rf{tag}_bh"
    out: dict[str, float] = {}
    with isolated_schema(env) as settings:
        engine = engine_for(settings)
        try:
            with engine.begin() as conn:
                for n in range(RECOVERED):
                    add_endpoint(conn, settings, url=f"{fast.url}/r/{n}", project_id=recovered)
                add_endpoint(conn, settings, url=f"{fast.url}/h", project_id=healthy)
                add_endpoint(conn, settings, url=f"{blackhole.url}/bh", project_id=void)
            # Each event goes to every endpoint of the project: one delivery per endpoint.
            _seed_outage(engine, settings, recovered, deliveries // RECOVERED)
            traffic = _Traffic(engine, settings, healthy, void)
            offset = fast.offset()
            with Processes(logdir, env) as procs:
                procs.celery_worker("workers", concurrency, "worker")
                procs.dispatcher()
                warm = traffic.run(per_second, lambda: traffic.sent >= WARMUP_EVENTS)
                wait_until(lambda: warm.keys() <= first_arrivals(fast, offset).keys(), timeout=60)
                measured = traffic.sent + baseline_events
                baseline = traffic.run(per_second, lambda: traffic.sent >= measured)
                with engine.begin() as conn:
                    now = clock.now()
                    selection = RecoverySelection(
                        recovered, "live", now - timedelta(hours=1), now, delivery_state="failed"
                    )
                    recovery_id = create_recovery(conn, settings, selection, now).id
                started = time.perf_counter()

                def finished() -> bool:
                    with engine.connect() as conn:
                        return get_recovery(conn, settings, recovery_id, clock.now()).is_finished

                during = traffic.run(per_second, finished)
                took = time.perf_counter() - started
                wait_until(lambda: first_arrivals(fast, offset).keys() >= during.keys(), timeout=60)
                with engine.connect() as conn:
                    done = get_recovery(conn, settings, recovery_id, clock.now())
        finally:
            engine.dispose()
    arrived = first_arrivals(fast, offset)

    def latencies(committed: dict[str, float]) -> list[float]:
        return [(arrived[k] - at) * 1000 for k, at in committed.items() if k in arrived]

    out.update(latency_figures("baseline", latencies(baseline)))
    out.update(latency_figures("recovery", latencies(during)))
    out.update(
        {
            "healthy_baseline_events": float(len(baseline)),
            "healthy_recovery_events": float(len(during)),
            "healthy_lost": float(sum(1 for k in [*baseline, *during] if k not in arrived)),
            "replays_succeeded": float(done.succeeded),
            "replays_per_s": done.sent / took if took > 0 else float("nan"),
            "p99_vs_baseline": out["recovery_p99_ms"] / out["baseline_p99_ms"],
        }
    )
    return out


def measure(
    fast: Receiver,
    blackhole: Receiver,
    *,
    runs: int = 3,
    deliveries: int = 3_000,
    per_second: float = 50.0,
    baseline_events: int = 500,
    concurrency: int = 32,
    logdir: Path | None = None,
) -> dict[str, Any]:
    """Each figure of `one_run` as a spread over ``runs``, and the runs themselves.

    Args:
        deliveries: failed deliveries the recovery replays (over `RECOVERED` endpoints).
        per_second: the healthy endpoint's scheduled events per second, both stretches.
        baseline_events: healthy events of the stretch without the recovery (the stretch
            with it lasts as long as the recovery).
        concurrency: the worker's threads.
    """
    logdir = logdir or Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    rows = []
    for n in range(runs):
        say(f"recovery fairness run {n + 1}/{runs}: {deliveries} replays, healthy {per_second}/s")
        rows.append(
            one_run(
                fast,
                blackhole,
                deliveries=deliveries,
                per_second=per_second,
                baseline_events=baseline_events,
                concurrency=concurrency,
                logdir=logdir,
            )
        )
    keys = sorted({k for row in rows for k in row})
    return {
        "deliveries": deliveries // RECOVERED * RECOVERED,
        "per_second": per_second,
        "figures": {k: spread([row[k] for row in rows]) for k in keys},
        "per_run": rows,
    }


def main() -> None:
    with Receivers() as receivers:
        result = measure(receivers.fast(), receivers.blackhole(), runs=1)
    f = result["figures"]
    print(
        f"healthy commit→arrival p99 during a recovery of {result['deliveries']}: "
        f"{f['recovery_p99_ms']['median']:.1f} ms, without it {f['baseline_p99_ms']['median']:.1f}"
        f" ms (same run): {f['p99_vs_baseline']['median']:.2f}x; replays "
        f"{f['replays_per_s']['median']:.0f}/s"
    )


if __name__ == "__main__":
    main()
