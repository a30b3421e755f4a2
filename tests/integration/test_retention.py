"""Retention against real Postgres: 100 k attempts pruned in short batches, live work untouched.

No dispatcher or worker runs here, so nothing but `prune` changes the rows the tests seed.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint
from webhooks import clock
from webhooks.database import sql
from webhooks.retention import PruneReport, prune
from webhooks.settings import Settings

OLD_EVENTS = 10_000
ATTEMPTS_PER_OLD_EVENT = 10  # 100,000 old attempts
DONE_REPLAYS = 1_000
STRADDLING = 100  # events older than the cutoff whose last attempt is not
RECENT = 1_000
LIVE_EACH = 20
RETENTION = timedelta(days=30)

EVENTS = """
INSERT INTO {s}.events (id, project_id, type, payload, created_at)
SELECT :prefix || lpad(i::text, 6, '0'), :project, 'deployment.succeeded', '{"id": "x"}',
       :at + i * interval '1 ms'
FROM generate_series(1, :n) AS i
"""
DELIVERIES = """
INSERT INTO {s}.deliveries (id, event_id, endpoint_id, project_id, state, attempt_count,
                            next_attempt_at, lease_expires_at, claim_token, created_at, updated_at)
SELECT 'dlv_' || :endpoint || :prefix || lpad(i::text, 6, '0'), :prefix || lpad(i::text, 6, '0'),
       :endpoint, 'proj_retention', :state, :attempts, CAST(:next_at AS timestamptz),
       CASE WHEN :state = 'delivering' THEN CAST(:lease AS timestamptz) END,
       CASE WHEN :state = 'delivering' THEN gen_random_uuid() END, :at, :at
FROM generate_series(1, :n) AS i
"""
ATTEMPTS = """
INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, project_id, mode, number,
                          trigger, started_at, duration_ms, request_url, request_headers,
                          response_status, response_body, error_kind)
SELECT 'dlv_' || :endpoint || :prefix || lpad(i::text, 6, '0'), :prefix || lpad(i::text, 6, '0'),
       :endpoint, 'proj_retention', 'live', k, 'scheduled',
       :at + i * interval '1 ms' + (k - 1) * :step,
       120, 'http://127.0.0.1:9/hook', '{"content-type": "application/json"}', 500,
       repeat('x', 200), 'http_status'
FROM generate_series(1, :n) AS i, generate_series(1, :k) AS k
"""
REPLAYS = """
INSERT INTO {s}.replays (delivery_id, state, requested_at)
SELECT 'dlv_' || :endpoint || :prefix || lpad(i::text, 6, '0'), :state, :at
FROM generate_series(1, :n) AS i
"""


class Seed:
    """Inserts synthetic history under one id prefix, fast (``generate_series``)."""

    def __init__(self, engine: Engine, settings: Settings, endpoints: tuple[str, str]) -> None:
        self.engine = engine
        self.settings = settings
        self.endpoints = endpoints
        self.tag = secrets.token_hex(3)

    def prefix(self, name: str) -> str:
        return f"evt_{self.tag}_{name}_"

    def events(
        self,
        name: str,
        n: int,
        at: datetime,
        *,
        state: str,
        attempts: int = 0,
        step: timedelta = timedelta(minutes=1),
        endpoint: int = 0,
        with_event: bool = True,
        next_at: datetime | None = None,
        replays: str | None = None,
    ) -> str:
        prefix = self.prefix(name)
        schema = self.settings.db_schema
        common = {"prefix": prefix, "n": n, "at": at, "endpoint": self.endpoints[endpoint]}
        with self.engine.begin() as conn:
            if with_event:
                conn.execute(sql(EVENTS, schema), {**common, "project": "proj_retention"})
            conn.execute(
                sql(DELIVERIES, schema),
                {
                    **common,
                    "state": state,
                    "attempts": attempts,
                    "next_at": next_at,
                    "lease": at + timedelta(days=365),
                },
            )
            if attempts:
                conn.execute(sql(ATTEMPTS, schema), {**common, "k": attempts, "step": step})
            if replays:
                conn.execute(sql(REPLAYS, schema), {**common, "state": replays})
        return prefix


def count(engine: Engine, settings: Settings, table: str, prefix: str) -> int:
    column = "id" if table == "events" else "event_id"
    join = ""
    if table == "replays":
        join = "JOIN {s}.deliveries d ON d.id = t.delivery_id"
        column = "d.event_id"
    with engine.connect() as conn:
        return int(
            conn.execute(
                sql(
                    f"SELECT count(*) FROM {{s}}.{table} t {join} WHERE {column} LIKE :p",
                    settings.db_schema,
                ),
                {"p": prefix + "%"},
            ).scalar_one()
        )


def footprint(engine: Engine, settings: Settings, prefix: str) -> tuple[int, int, int, int]:
    """(events, deliveries, replays, attempts) under one prefix."""
    events, deliveries, replays, attempts = (
        count(engine, settings, table, prefix)
        for table in ("events", "deliveries", "replays", "attempts")
    )
    return events, deliveries, replays, attempts


@pytest.fixture(scope="module")
def endpoints(engine: Engine, settings: Settings) -> tuple[str, str]:
    return (
        new_endpoint(engine, settings, "http://127.0.0.1:9/a", "proj_retention")[0],
        new_endpoint(engine, settings, "http://127.0.0.1:9/b", "proj_retention")[0],
    )


def seed_history(seed: Seed, now: datetime) -> tuple[list[str], list[str], list[str]]:
    """Seed old settled history, live old events and recent ones; return the three prefixes."""
    old = now - RETENTION - timedelta(days=10)
    settled = [
        seed.events(
            "succeeded", OLD_EVENTS // 2, old, state="succeeded", attempts=ATTEMPTS_PER_OLD_EVENT
        ),
        seed.events(
            "failed",
            OLD_EVENTS // 2 - DONE_REPLAYS,
            old,
            state="failed",
            attempts=ATTEMPTS_PER_OLD_EVENT,
        ),
        seed.events(
            "replayed",
            DONE_REPLAYS,
            old,
            state="failed",
            attempts=ATTEMPTS_PER_OLD_EVENT,
            replays="done",
        ),
        # Created before the cutoff, last attempt after it: the event takes it along.
        seed.events(
            "straddling",
            STRADDLING,
            now - RETENTION - timedelta(hours=1),
            state="failed",
            attempts=2,
            step=timedelta(hours=2),
        ),
    ]
    live = [
        seed.events("held", LIVE_EACH, old, state="pending", attempts=3),
        seed.events(
            "scheduled",
            LIVE_EACH,
            old,
            state="pending",
            attempts=3,
            next_at=now + timedelta(hours=1),
        ),
        seed.events("delivering", LIVE_EACH, old, state="delivering", attempts=3),
        seed.events("replaying", LIVE_EACH, old, state="failed", attempts=3, replays="pending"),
        seed.events(
            "replay_sent", LIVE_EACH, old, state="succeeded", attempts=3, replays="delivering"
        ),
    ]
    # One finished delivery, one still pending to another endpoint: the whole event stays.
    mixed = seed.events("mixed", LIVE_EACH, old, state="succeeded", attempts=3)
    seed.events("mixed", LIVE_EACH, old, state="pending", attempts=3, endpoint=1, with_event=False)
    live.append(mixed)
    recent = [seed.events("recent", RECENT, now - timedelta(days=1), state="succeeded", attempts=2)]
    return settled, live, recent


def test_prune_of_100k_attempts_is_batched_and_spares_live_and_recent_rows(
    engine: Engine, settings: Settings, endpoints: tuple[str, str]
) -> None:
    now = clock.now()
    seed = Seed(engine, settings, endpoints)
    settled, live, recent = seed_history(seed, now)
    kept_before = {p: footprint(engine, settings, p) for p in live + recent}

    dry = prune(engine, settings, older_than=RETENTION, now=now, dry_run=True)
    batches: list[PruneReport] = []
    report = prune(engine, settings, older_than=RETENTION, now=now, on_progress=batches.append)
    print(f"\nprune (dry run): {dry.summary()}")
    print(f"prune: {report.summary()}")

    expected_attempts = (OLD_EVENTS * ATTEMPTS_PER_OLD_EVENT) + STRADDLING * 2
    assert report.attempts == expected_attempts
    assert report.events == OLD_EVENTS + STRADDLING
    assert report.deliveries == OLD_EVENTS + STRADDLING
    assert report.replays == DONE_REPLAYS
    assert (dry.attempts, dry.events, dry.deliveries, dry.replays) == (
        report.attempts,
        report.events,
        report.deliveries,
        report.replays,
    )
    # Batched: no transaction deleted more than batch_size rows of its phase.
    assert len(batches) == report.batches >= expected_attempts // 5000
    previous = PruneReport(cutoff=report.cutoff)
    for batch in batches:
        if batch.phase == "attempts":
            assert batch.attempts - previous.attempts <= 5000
        else:
            assert batch.events - previous.events <= 5000
        previous = batch
    print(f"batches: {report.batches}, longest {report.longest_batch.total_seconds():.3f}s")

    for prefix in settled:
        assert footprint(engine, settings, prefix) == (0, 0, 0, 0), prefix
    for prefix in live + recent:
        assert footprint(engine, settings, prefix) == kept_before[prefix], prefix


def test_prune_resumes_after_an_interruption_and_a_second_run_deletes_nothing(
    engine: Engine, settings: Settings, endpoints: tuple[str, str]
) -> None:
    now = clock.now()
    seed = Seed(engine, settings, endpoints)
    old = now - RETENTION - timedelta(days=2)
    prefix = seed.events("resume", 2_000, old, state="succeeded", attempts=5)
    held = seed.events("held_resume", 10, old, state="pending", attempts=5)
    seen: list[PruneReport] = []
    held_before = footprint(engine, settings, held)
    expected = prune(engine, settings, older_than=RETENTION, now=now, dry_run=True)
    assert (expected.attempts, expected.events) == (10_000, 2_000)

    class Interrupted(Exception):
        pass

    def stop_after_three(progress: PruneReport) -> None:
        seen.append(progress)
        if progress.batches == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        prune(
            engine,
            settings,
            older_than=RETENTION,
            now=now,
            batch_size=1_000,
            on_progress=stop_after_three,
        )
    done = seen[-1].attempts  # three whole batches committed, and only those
    assert done > 0
    assert footprint(engine, settings, prefix)[3] == 10_000 - done

    rest = prune(engine, settings, older_than=RETENTION, now=now, batch_size=1_000)
    assert rest.attempts == 10_000 - done and rest.events == 2_000 and rest.deliveries == 2_000
    assert footprint(engine, settings, prefix) == (0, 0, 0, 0)
    assert footprint(engine, settings, held) == held_before

    again = prune(engine, settings, older_than=RETENTION, now=now, batch_size=1_000)
    assert (again.attempts, again.events, again.deliveries, again.replays) == (0, 0, 0, 0)
    assert footprint(engine, settings, held) == held_before


def test_a_replay_queued_for_an_old_event_protects_it_until_it_is_done(
    engine: Engine, settings: Settings, endpoints: tuple[str, str]
) -> None:
    now = clock.now()
    seed = Seed(engine, settings, endpoints)
    prefix = seed.events("late_replay", 5, now - timedelta(days=90), state="failed", attempts=2)
    with engine.begin() as conn:
        conn.execute(
            sql(
                "INSERT INTO {s}.replays (delivery_id, requested_at) "
                "SELECT id, :now FROM {s}.deliveries WHERE event_id LIKE :p",
                settings.db_schema,
            ),
            {"now": now, "p": prefix + "%"},
        )
    prune(engine, settings, older_than=RETENTION, now=now)
    assert footprint(engine, settings, prefix) == (5, 5, 5, 10)

    with engine.begin() as conn:
        conn.execute(sql("UPDATE {s}.replays SET state = 'done'", settings.db_schema))
    prune(engine, settings, older_than=RETENTION, now=now)
    assert footprint(engine, settings, prefix) == (0, 0, 0, 0)


def test_old_events_whose_deliveries_were_cancelled_are_pruned(
    engine: Engine, settings: Settings, endpoints: tuple[str, str]
) -> None:
    # A deleted endpoint's deliveries are finished: they must not keep old events forever.
    now = clock.now()
    seed = Seed(engine, settings, endpoints)
    prefix = seed.events("cancelled", 5, now - timedelta(days=90), state="cancelled", attempts=2)
    prune(engine, settings, older_than=RETENTION, now=now)
    assert footprint(engine, settings, prefix) == (0, 0, 0, 0)


def test_prune_refuses_a_non_positive_age(engine: Engine, settings: Settings) -> None:
    from webhooks.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="older-than"):
        prune(engine, settings, older_than=timedelta(0))


def test_prune_removes_expired_idempotency_answers_retired_api_keys_and_portal_sessions(
    engine: Engine, settings: Settings
) -> None:
    from webhooks.api._idempotency import claim, store
    from webhooks.keys import create_key
    from webhooks.pages import Scope
    from webhooks.portal_sessions import create_portal_session, revoke_portal_session

    now = clock.now()
    project = f"proj_{secrets.token_hex(4)}"
    world = Scope(project_id=project, mode="live")
    with engine.begin() as conn:
        for key, at in (("old", now - timedelta(hours=25)), ("new", now - timedelta(hours=1))):
            claim(conn, settings, world, key, "hash", at)
            store(conn, settings, world, key, 201, {"id": key})
        ids = {}
        for name in ("revoked_long_ago", "expired_long_ago", "revoked_lately", "active"):
            key, _ = create_key(conn, settings.db_schema, project_id=project, mode="live")
            ids[name] = key.id
        retired = sql(
            "UPDATE {s}.api_keys SET revoked_at = :revoked, expires_at = :expires WHERE id = :id",
            settings.db_schema,
        )
        long_ago = now - timedelta(days=40)
        conn.execute(retired, {"id": ids["revoked_long_ago"], "revoked": long_ago, "expires": None})
        conn.execute(retired, {"id": ids["expired_long_ago"], "revoked": None, "expires": long_ago})
        conn.execute(retired, {"id": ids["revoked_lately"], "revoked": now, "expires": None})
        sessions = {}
        for name, created, ttl in (
            ("expired_long_ago", now - timedelta(days=41), timedelta(days=1)),
            ("revoked_long_ago", now - timedelta(days=41), timedelta(days=365)),
            ("expired_lately", now - timedelta(days=2), timedelta(days=1)),
            ("open", now, timedelta(hours=1)),
        ):
            session, _ = create_portal_session(
                conn,
                settings.db_schema,
                project_id=project,
                mode="live",
                key_id="key_x",
                ttl=ttl,
                now=created,
            )
            sessions[name] = session.id
        revoke_portal_session(
            conn, settings.db_schema, world, sessions["revoked_long_ago"], long_ago
        )

    counted = prune(engine, settings, older_than=timedelta(days=30), dry_run=True)
    report = prune(engine, settings, older_than=timedelta(days=30), batch_size=1)

    assert (counted.idempotency, counted.api_keys, counted.portal_sessions) == (1, 2, 2)
    assert (report.idempotency, report.api_keys, report.portal_sessions) == (1, 2, 2)
    assert "2 revoked or expired API keys, 2 ended portal sessions" in report.summary()
    with engine.connect() as conn:
        kept_answers = (
            conn.execute(
                sql(
                    "SELECT idempotency_key FROM {s}.api_idempotency WHERE project_id = :p",
                    settings.db_schema,
                ),
                {"p": project},
            )
            .scalars()
            .all()
        )
        kept_keys = set(
            conn.execute(
                sql("SELECT id FROM {s}.api_keys WHERE project_id = :p", settings.db_schema),
                {"p": project},
            ).scalars()
        )
        kept_sessions = set(
            conn.execute(
                sql(
                    "SELECT id FROM {s}.portal_sessions WHERE project_id = :p",
                    settings.db_schema,
                ),
                {"p": project},
            ).scalars()
        )
    assert kept_answers == ["new"]
    assert kept_keys == {ids["revoked_lately"], ids["active"]}
    assert kept_sessions == {sessions["expired_lately"], sessions["open"]}
