"""`webhooks stats` against real Postgres: counts by state, endpoint health, backlog."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint
from webhooks import clock
from webhooks.cli.operations import format_stats
from webhooks.database import create_engine, migrate, sql
from webhooks.endpoints import delete_endpoint, disable_endpoint
from webhooks.settings import Settings
from webhooks.stats import delivery_stats


@pytest.fixture
def fresh(settings: Settings) -> Settings:
    """An empty schema of its own: stats count the whole schema."""
    from dataclasses import replace

    return replace(settings, db_schema=f"{settings.db_schema}_stats")


def seed(
    engine: Engine,
    settings: Settings,
    endpoint: str,
    tag: str,
    states: dict[str, int],
    *,
    due: bool = False,
) -> None:
    now = clock.now()
    with engine.begin() as conn:
        for state, n in states.items():
            conn.execute(
                sql(
                    "INSERT INTO {s}.events (id, project_id, type, payload, created_at) "
                    "SELECT 'evt_' || :tag || :state || i, 'proj_s', 'x.y', '{}', :now "
                    "FROM generate_series(1, :n) AS i",
                    settings.db_schema,
                ),
                {"tag": tag, "state": state, "n": n, "now": now},
            )
            conn.execute(
                sql(
                    "INSERT INTO {s}.deliveries (id, event_id, endpoint_id, project_id, state, "
                    "next_attempt_at, created_at, updated_at) "
                    "SELECT 'dlv_' || :tag || :state || i, 'evt_' || :tag || :state || i, :ep, "
                    "'proj_s', :state, CAST(:next_at AS timestamptz), :now, :now "
                    "FROM generate_series(1, :n) AS i",
                    settings.db_schema,
                ),
                {
                    "tag": tag,
                    "state": state,
                    "n": n,
                    "ep": endpoint,
                    "now": now,
                    "next_at": now - timedelta(minutes=5) if due and state == "pending" else None,
                },
            )


def test_stats_count_deliveries_by_state_and_rank_failing_endpoints(fresh: Settings) -> None:
    migrate(fresh)
    engine = create_engine(fresh, pool_size=1)
    try:
        healthy = new_endpoint(engine, fresh, "http://127.0.0.1:9/ok", "proj_s")[0]
        failing = new_endpoint(engine, fresh, "http://127.0.0.1:9/bad", "proj_s")[0]
        held = new_endpoint(engine, fresh, "http://127.0.0.1:9/held", "proj_s")[0]
        tripped = new_endpoint(engine, fresh, "http://127.0.0.1:9/trip", "proj_s")[0]
        seed(engine, fresh, healthy, "h", {"succeeded": 50, "pending": 2}, due=True)
        seed(engine, fresh, failing, "f", {"failed": 7, "succeeded": 3, "delivering": 1})
        seed(engine, fresh, held, "d", {"pending": 4, "failed": 1})
        seed(engine, fresh, tripped, "t", {"failed": 2})
        gone = new_endpoint(engine, fresh, "http://127.0.0.1:9/gone", "proj_s")[0]
        seed(engine, fresh, gone, "g", {"pending": 3, "succeeded": 1})
        with engine.begin() as conn:
            disable_endpoint(conn, fresh, held, reason="customer asked")
            delete_endpoint(conn, fresh, gone)
            conn.execute(
                sql(
                    "UPDATE {s}.endpoints SET breaker_open_until = :at WHERE id = :id",
                    fresh.db_schema,
                ),
                {"at": clock.now() + timedelta(minutes=1), "id": tripped},
            )

        with engine.connect() as conn:
            stats = delivery_stats(conn, fresh, top=3)
        print("\n" + format_stats(stats))

        assert stats["deliveries"] == {
            "pending": 6,
            "delivering": 1,
            "succeeded": 54,
            "failed": 10,
            "cancelled": 3,
            "total": 74,
        }
        assert stats["endpoints"] == {
            "enabled": 3,
            "disabled": 1,
            "deleted": 1,
            "breakers_open": 1,
        }
        assert stats["backlog"]["due"] == 2
        assert 290 <= stats["backlog"]["oldest_due_age_seconds"] <= 400
        top = stats["top_endpoints"]
        assert [row["endpoint_id"] for row in top] == [failing, tripped, held]
        assert top[0] | {"endpoint_id": "-"} == {
            "endpoint_id": "-",
            "project_id": "proj_s",
            "enabled": True,
            "disabled_reason": None,
            "breaker_open": False,
            "pending": 0,
            "delivering": 1,
            "succeeded": 3,
            "failed": 7,
            "cancelled": 0,
        }
        assert top[1]["breaker_open"] and not top[2]["enabled"]

        text = format_stats(stats)
        assert "74 total: 6 pending, 1 delivering, 54 succeeded, 10 failed, 3 cancelled" in text
        assert "3 enabled, 1 disabled, 1 deleted, 1 with the circuit breaker open" in text
        assert "disabled (customer asked)" in text and "breaker open" in text
        assert healthy not in text  # only failing or holding endpoints are listed
    finally:
        with engine.begin() as conn:
            conn.execute(sql("DROP SCHEMA IF EXISTS {s} CASCADE", fresh.db_schema))
        engine.dispose()


def test_stats_of_an_empty_schema_are_zeros(engine: Engine, settings: Settings) -> None:
    with engine.connect() as conn:
        stats = delivery_stats(conn, settings)
    assert stats["deliveries"]["total"] == 0
    assert stats["backlog"] == {"due": 0, "oldest_due_age_seconds": None}
    assert "no endpoint has failed or pending deliveries" in format_stats(stats)
