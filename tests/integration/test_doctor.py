"""`webhooks.cli.doctor` against real services: healthy with a running stack, and each way of being
unhealthy reported by name, quickly (a probe must not hang on a dead dependency)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

import schema as schema_package
from tests.support.deliveries import new_endpoint
from tests.support.processes import Stack
from webhooks import clock
from webhooks.cli.doctor import Check, head_revision, run_checks, verdict
from webhooks.database import create_engine, sql
from webhooks.heartbeats import beat, list_dispatchers
from webhooks.settings import Settings

CHECKS = ["database", "schema", "broker", "workers", "dispatcher", "backlog", "clock", "secrets"]
CLOSED_PORT = 1  # nothing listens on port 1 here: connections are refused at once


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == CHECKS
    return {c.name: c for c in checks}


def timed_checks(settings: Settings, **kwargs: object) -> tuple[list[Check], float]:
    started = time.monotonic()
    checks = run_checks(settings, **kwargs)  # type: ignore[arg-type]
    return checks, time.monotonic() - started


def test_a_running_stack_is_healthy_and_exits_0(
    stack: Stack, engine: Engine, settings: Settings
) -> None:
    checks, seconds = timed_checks(settings)
    code, text = verdict(checks)
    print(f"\n{text}\n({seconds:.2f}s)")
    assert code == 0, text
    # No WEBHOOKS_SECRET_KEY here: healthy, but not silently so.
    assert text.splitlines()[-1] == "healthy: all 8 checks passed (with warnings: secrets)"
    found = by_name(checks)
    assert found["secrets"].is_warning and "plain text" in found["secrets"].detail
    assert any(line.startswith("WARN  secrets") for line in text.splitlines())
    assert found["clock"].ok and "the database's" in found["clock"].detail
    assert f"head revision {head_revision()}" in found["schema"].detail
    assert "1 on queue" in found["workers"].detail
    assert seconds < 15


def test_a_database_that_refuses_connections_is_reported_quickly(settings: Settings) -> None:
    down = replace(
        settings,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/test",
    )
    checks, seconds = timed_checks(down)
    found = by_name(checks)
    code, text = verdict(checks)
    print(f"\n{text}\n({seconds:.2f}s)")
    assert code == 1
    assert not found["database"].ok and "cannot reach Postgres" in found["database"].detail
    assert "DATABASE_URL" in found["database"].detail
    assert found["schema"].detail.startswith("skipped")
    assert found["broker"].ok
    assert "database" in text.splitlines()[-1]
    assert seconds < 10


@pytest.mark.parametrize(
    "broker_url",
    [f"redis://127.0.0.1:{CLOSED_PORT}/0", f"amqp://guest:guest@127.0.0.1:{CLOSED_PORT}//"],
)
def test_a_broker_that_is_down_is_reported_quickly(settings: Settings, broker_url: str) -> None:
    down = replace(settings, broker_url=broker_url)
    checks, seconds = timed_checks(down)
    found = by_name(checks)
    print(f"\n{verdict(checks)[1]}\n({seconds:.2f}s)")
    assert verdict(checks)[0] == 1
    assert not found["broker"].ok and "CELERY_BROKER_URL" in found["broker"].detail
    assert found["workers"].detail.startswith("skipped")
    assert found["database"].ok and found["schema"].ok
    assert seconds < 10


def test_workers_of_other_queues_do_not_count(stack: Stack, settings: Settings) -> None:
    found = by_name(run_checks(replace(settings, queue="q_nobody_listens")))
    assert not found["workers"].ok
    assert "no worker consumes queue 'q_nobody_listens'" in found["workers"].detail
    assert "other workers answered" in found["workers"].detail


def test_an_unmigrated_schema_says_to_run_migrate(settings: Settings) -> None:
    fresh = replace(settings, db_schema=f"{settings.db_schema}_none")
    found = by_name(run_checks(fresh))
    assert not found["schema"].ok
    assert "not migrated" in found["schema"].detail
    assert "webhooks migrate" in found["schema"].detail
    assert found["dispatcher"].detail.startswith("skipped")
    assert found["backlog"].detail.startswith("skipped")


def test_a_schema_behind_the_code_names_both_revisions(settings: Settings) -> None:
    behind = replace(settings, db_schema=f"{settings.db_schema}_old")
    config = Config()
    config.set_main_option("script_location", str(Path(schema_package.__file__).parent))
    config.attributes["schema"] = behind.db_schema
    engine = create_engine(behind, pool_size=1)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
        found = by_name(run_checks(behind))
        assert not found["schema"].ok
        assert f"at revision 0003, the code expects {head_revision()}" in found["schema"].detail
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{behind.db_schema}" CASCADE'))
        engine.dispose()


def test_a_stale_heartbeat_and_an_aged_backlog_fail_their_checks(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint, _ = new_endpoint(engine, settings, "http://127.0.0.1:9/late", project)
    real_now = clock.now()
    # Due an hour from now (so no dispatcher takes it): asked two hours ahead, it has waited
    # an hour, and every heartbeat is two hours old.
    with engine.begin() as conn:
        params = {"p": project, "ep": endpoint, "due": real_now + timedelta(hours=1)}
        conn.execute(
            sql(
                "INSERT INTO {s}.events (id, project_id, type, payload, created_at) "
                "VALUES ('evt_doctor_late', :p, 'x.y', '{}', now())",
                settings.db_schema,
            ),
            params,
        )
        conn.execute(
            sql(
                "INSERT INTO {s}.deliveries (id, event_id, endpoint_id, project_id, "
                "next_attempt_at, created_at, updated_at) "
                "VALUES ('dlv_doctor_late', 'evt_doctor_late', :ep, :p, :due, now(), now())",
                settings.db_schema,
            ),
            params,
        )
        beat(conn, settings, "doctor-test", real_now)
    found = by_name(run_checks(settings, now=real_now + timedelta(hours=2)))
    assert not found["backlog"].ok
    assert "the oldest for 60.0m" in found["backlog"].detail
    assert not found["dispatcher"].ok and "over 30.0s" in found["dispatcher"].detail
    with engine.connect() as conn:
        assert "doctor-test" in {d.id for d in list_dispatchers(conn, settings)}

    # Within the thresholds, both pass.
    found = by_name(
        run_checks(
            settings,
            now=real_now + timedelta(hours=1, seconds=10),
            heartbeat_age=timedelta(hours=2),
        )
    )
    assert found["backlog"].ok and "1 due deliveries" in found["backlog"].detail
    assert found["dispatcher"].ok


def test_verdict_lists_every_check_and_names_the_failures() -> None:
    code, text = verdict(
        [Check("database", True, "fine"), Check("broker", False, "down"), Check("x", False, "")]
    )
    assert code == 1
    assert text.splitlines() == [
        "ok    database  fine",
        "FAIL  broker    down",
        "FAIL  x",  # a table line never ends in spaces
        "unhealthy: 2 of 3 checks failed (broker, x)",
    ]
    assert verdict([Check("database", True, "fine")])[0] == 0


@pytest.fixture(autouse=True)
def _no_leftover_due_rows(engine: Engine, settings: Settings) -> None:
    """The late delivery must not linger for the healthy test (order-independent)."""
    with engine.begin() as conn:
        conn.execute(sql("DELETE FROM {s}.events WHERE id = 'evt_doctor_late'", settings.db_schema))
        # Only the rows these tests make up; the live dispatcher's own row must stay.
        conn.execute(
            sql(
                "DELETE FROM {s}.dispatchers WHERE id IN ('d1', 'd2', 'doctor-test')",
                settings.db_schema,
            )
        )


def test_a_beat_keeps_the_start_time_and_moves_seen_at_forward_only(
    engine: Engine, settings: Settings
) -> None:
    from webhooks.heartbeats import forget, forget_stale

    t0 = clock.now()
    with engine.begin() as conn:
        beat(conn, settings, "d1", t0, hostname="host-a", pid=11)
        beat(conn, settings, "d1", t0 + timedelta(seconds=5))
        beat(conn, settings, "d1", t0 + timedelta(seconds=2))  # a late, out-of-order beat
        beat(conn, settings, "d2", t0 - timedelta(days=2), hostname="host-b", pid=12)
        [d1, d2] = [d for d in list_dispatchers(conn, settings) if d.id in {"d1", "d2"}]
        assert (d1.id, d1.hostname, d1.pid) == ("d1", "host-a", 11)
        assert d1.started_at == t0 and d1.seen_at == t0 + timedelta(seconds=5)
        assert d2.id == "d2"
        assert forget_stale(conn, settings, older_than=timedelta(days=1), now=t0) == 1
        forget(conn, settings, "d1")
        assert not {"d1", "d2"} & {d.id for d in list_dispatchers(conn, settings)}
