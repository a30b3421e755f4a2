"""Publish writes the event alone; the expansion, after the commit, writes its deliveries.

Against a real Postgres: what a publish transaction touches (the events table, whatever the
number of endpoints), a rolled-back publish, concurrent expansions (each event exactly once),
the rules applied at expansion time (created before it: included; disabled: held; deleted:
none; `only_endpoint`), the filter rule in SQL against `event_types.matches` on random
filters, and the commands that meet an event before its expansion (replay, recovery with
``--include-unrouted``, prune, stats, doctor).
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection, Engine

from tests.support.cli import cli_ok
from tests.support.deliveries import deliveries, expand, new_endpoint, publish_one
from webhooks import clock
from webhooks.cli.doctor import run_checks
from webhooks.database import sql
from webhooks.endpoints import add_endpoint, delete_endpoint, disable_endpoint
from webhooks.event_types import matches
from webhooks.expansion import Expanded, Expander, expand_batch, expand_event, expand_events
from webhooks.outbox import publish_event
from webhooks.recovery import RecoverySelection, advance_recoveries, create_recovery
from webhooks.replay import replay_event
from webhooks.retention import prune
from webhooks.sandbox import trigger_event
from webhooks.settings import Settings
from webhooks.stats import delivery_stats

URL = "http://127.0.0.1:9/hook"

# Every table a statement read or wrote in this backend (its own counters, not yet flushed to
# the shared statistics).
TOUCHED = """
SELECT relname FROM pg_stat_xact_user_tables
WHERE schemaname = :schema
  AND seq_scan + coalesce(idx_scan, 0) + n_tup_ins + n_tup_upd + n_tup_del > 0
"""


def _publish(conn: Connection, settings: Settings, project: str, **kwargs: Any) -> str:
    return publish_event(
        conn, settings, project_id=project, type="deployment.succeeded", data={}, **kwargs
    ).id


def _endpoints(engine: Engine, settings: Settings, project: str, n: int) -> list[str]:
    return [new_endpoint(engine, settings, f"{URL}/{i}", project)[0] for i in range(n)]


@pytest.mark.parametrize("listening", [0, 1, 200])
def test_a_publish_touches_the_events_table_alone_in_one_statement(
    engine: Engine, settings: Settings, project: str, listening: int
) -> None:
    _endpoints(engine, settings, project, listening)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    # A backend of its own: the counters also hold a backend's earlier transactions until
    # they are flushed to the shared statistics.
    fresh = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with fresh.connect() as conn:
        with conn.begin():
            sa.event.listen(conn, "before_cursor_execute", count)
            event_id = _publish(conn, settings, project)
            sa.event.remove(conn, "before_cursor_execute", count)
            touched = conn.execute(sa.text(TOUCHED), {"schema": settings.db_schema}).scalars()
            assert set(touched) == {"events"}
        assert len(statements) == 1
    fresh.dispose()
    assert deliveries(engine, settings, event_id) == []  # until a dispatcher expands it
    assert expand(engine, settings, event_id).deliveries == listening


def test_a_rolled_back_publish_is_never_expanded(
    engine: Engine, settings: Settings, project: str
) -> None:
    _endpoints(engine, settings, project, 2)
    with engine.connect() as conn:
        transaction = conn.begin()
        event_id = _publish(conn, settings, project)
        transaction.rollback()
    expand(engine, settings)
    with engine.connect() as conn:
        found = conn.execute(
            sql(
                "SELECT (SELECT count(*) FROM {s}.events WHERE id = :id) "
                "+ (SELECT count(*) FROM {s}.deliveries WHERE event_id = :id)",
                settings.db_schema,
            ),
            {"id": event_id},
        ).scalar_one()
    assert found == 0


def test_concurrent_expansions_expand_each_event_exactly_once(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoints = _endpoints(engine, settings, project, 3)
    expand(engine, settings)  # what earlier tests left
    with engine.begin() as conn:
        events = [_publish(conn, settings, project) for _ in range(120)]
    results: list[Expanded] = []
    start = threading.Barrier(4)

    def dispatcher() -> None:
        expander = Expander(engine, settings)
        expander.limit = 7  # small batches, so the four interleave
        start.wait()
        total = Expanded()
        while True:
            total += expander.run(budget=0.0)
            if not total.more:
                break
        results.append(total)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Every event marked once and every delivery written once (no insert met a conflict).
    assert sum(r.events for r in results) == len(events)
    assert sum(r.deliveries for r in results) == len(events) * len(endpoints)
    with engine.connect() as conn:
        pairs = conn.execute(
            sql(
                "SELECT event_id, endpoint_id FROM {s}.deliveries "
                "WHERE event_id = ANY (CAST(:ids AS text[]))",
                settings.db_schema,
            ),
            {"ids": events},
        ).all()
    assert Counter(map(tuple, pairs)) == {(e, ep): 1 for e in events for ep in endpoints}


def test_a_named_expansion_waits_for_a_dispatcher_holding_the_event(
    engine: Engine, settings: Settings, project: str
) -> None:
    _endpoints(engine, settings, project, 2)
    expand(engine, settings)
    event_id = publish_one(engine, settings, project)
    answer: list[int] = []
    with engine.connect() as dispatcher:
        with dispatcher.begin():
            assert expand_batch(dispatcher, settings, 10).events == 1  # locked, uncommitted

            def trigger() -> None:
                with engine.begin() as conn:
                    answer.append(expand_event(conn, settings, event_id))

            waiting = threading.Thread(target=trigger)
            waiting.start()
            waiting.join(timeout=0.5)
            assert waiting.is_alive() and answer == []  # it waits for the commit...
        waiting.join(timeout=10)
    assert answer == [2]  # ...then counts the dispatcher's deliveries, writing none of its own
    assert len(deliveries(engine, settings, event_id)) == 2


def test_the_endpoints_are_those_subscribed_when_the_event_is_expanded(
    engine: Engine, settings: Settings, project: str
) -> None:
    kept, disabled, deleted = _endpoints(engine, settings, project, 3)
    event_id = publish_one(engine, settings, project)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, disabled, reason="maintenance")
        delete_endpoint(conn, settings, deleted)
        later, _ = add_endpoint(conn, settings, url=f"{URL}/later", project_id=project)
        add_endpoint(conn, settings, url=f"{URL}/test", project_id=project, mode="test")
        add_endpoint(conn, settings, url=f"{URL}/other", project_id=project + "_other")
    expand(engine, settings, event_id)
    with engine.begin() as conn:
        add_endpoint(conn, settings, url=f"{URL}/after", project_id=project)  # too late

    found = {d.endpoint_id: d for d in deliveries(engine, settings, event_id)}
    assert set(found) == {kept, disabled, later.id}  # neither the deleted nor `after`
    assert found[disabled].state == "pending" and found[disabled].next_attempt_at is None
    assert found[kept].next_attempt_at is not None and found[later.id].next_attempt_at is not None


def test_a_simulated_event_goes_to_its_one_endpoint_whatever_its_filter(
    engine: Engine, settings: Settings, env: dict[str, str], project: str
) -> None:
    target, _ = new_endpoint(engine, settings, URL, project, ("project.*",), mode="test")
    new_endpoint(engine, settings, f"{URL}/2", project, mode="test")
    with engine.begin() as conn:
        result = trigger_event(
            conn,
            settings,
            project_id=project,
            event_type="deployment.succeeded",
            data={},
            endpoint_id=target,
        )
    assert deliveries(engine, settings, result.id) == []
    with engine.begin() as conn:
        assert expand_event(conn, settings, result.id) == 1
    assert [d.endpoint_id for d in deliveries(engine, settings, result.id)] == [target]
    # The command expands its own event after the commit, to say where it went.
    triggered = cli_ok(
        env, "trigger", "deployment.failed", "--project", project, "--endpoint", target, "--json"
    )
    assert triggered["deliveries"] == 1
    assert [d.endpoint_id for d in deliveries(engine, settings, triggered["id"])] == [target]


def test_a_replay_of_an_event_not_yet_expanded_goes_where_the_event_goes(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, URL, project)
    event_id = publish_one(engine, settings, project)
    with engine.begin() as conn:
        assert replay_event(conn, settings, event_id, endpoint_id=endpoint_id).queued == 1
    assert [d.endpoint_id for d in deliveries(engine, settings, event_id)] == [endpoint_id]


def test_a_recovery_with_unrouted_events_meets_an_unexpanded_one_without_doubling(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoints = set(_endpoints(engine, settings, project, 2))
    event_id = publish_one(engine, settings, project)
    now = clock.now()
    selection = RecoverySelection(
        project_id=project,
        mode="live",
        since=now - timedelta(minutes=5),
        until=now + timedelta(minutes=5),
        include_unrouted=True,
    )
    with engine.begin() as conn:
        create_recovery(conn, settings, selection, now)
    while advance_recoveries(engine, settings, clock.now()):
        pass
    expand(engine, settings)
    found = deliveries(engine, settings, event_id)
    # One each, the expansion's own (pending, on the schedule), each with the recovery's replay.
    assert sorted(d.endpoint_id for d in found) == sorted(endpoints)
    assert {d.state for d in found} == {"pending"}


def test_prune_keeps_an_old_event_that_awaits_expansion_and_stats_and_doctor_show_it(
    engine: Engine, settings: Settings, project: str
) -> None:
    expand(engine, settings)
    _endpoints(engine, settings, project, 1)
    event_id = publish_one(engine, settings, project)
    with engine.begin() as conn:
        conn.execute(
            sql(
                "UPDATE {s}.events SET created_at = created_at - interval '40 days' WHERE id = :id",
                settings.db_schema,
            ),
            {"id": event_id},
        )
    assert prune(engine, settings, older_than=timedelta(days=30)).events == 0
    with engine.connect() as conn:
        awaiting = delivery_stats(conn, settings)["expansion"]
    assert awaiting["awaiting"] == 1 and awaiting["oldest_age_seconds"] > 39 * 86400
    [backlog] = [c for c in run_checks(settings) if c.name == "backlog"]
    assert not backlog.ok and "1 events awaiting expansion" in backlog.detail

    expand(engine, settings)
    assert prune(engine, settings, older_than=timedelta(days=30)).events == 0  # still pending
    with engine.connect() as conn:
        assert delivery_stats(conn, settings)["expansion"]["awaiting"] == 0


# -- the filter rule: SQL (as the expansion runs it) and Python agree -------------------------

# Few, overlapping words, so prefixes collide often ("a.*" against "ab.c", "A" against "a").
WORDS = st.sampled_from(["a", "ab", "A", "b", "a-b", "a_b", "0"])
TYPES = st.lists(WORDS, min_size=1, max_size=3).map(".".join)
FILTER = st.one_of(TYPES, TYPES.map(lambda prefix: prefix + ".*"))


@given(
    filter_lists=st.lists(st.lists(FILTER, max_size=3), min_size=1, max_size=4),
    types=st.lists(TYPES, min_size=1, max_size=4),
)
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_sql_filter_and_matches_agree(
    engine: Engine, settings: Settings, filter_lists: list[list[str]], types: list[str]
) -> None:
    project = f"proj_{secrets.token_hex(4)}"
    with engine.begin() as conn:
        added = [
            add_endpoint(conn, settings, url=URL, project_id=project, event_types=filters)[0]
            for filters in filter_lists
        ]
        endpoints = {endpoint.id: endpoint.event_types for endpoint in added}
        events = {
            publish_event(conn, settings, project_id=project, type=t, data={}).id: t for t in types
        }
        expand_events(conn, settings, list(events))
    for event_id, event_type in events.items():
        got = {d.endpoint_id for d in deliveries(engine, settings, event_id)}
        assert got == {ep for ep, filters in endpoints.items() if matches(filters, event_type)}
