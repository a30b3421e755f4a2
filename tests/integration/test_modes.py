"""Live and test modes against a real Postgres: fan-out never crosses modes or projects (a
property test, and a database constraint for code that forgets), idempotency per mode, the
envelope's "mode", events stored before modes keep their bytes, and the CLI's --mode."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tests.conftest import make_env
from tests.support.cli import cli_ok, run_cli
from tests.support.deliveries import deliveries, expand, new_endpoint, publish_expanded, publish_one
from webhooks.database import create_engine, migrate, sql
from webhooks.endpoints import add_endpoint, disable_endpoint
from webhooks.event_types import matches
from webhooks.expansion import expand_events
from webhooks.outbox import publish_event
from webhooks.settings import Settings

PROJECTS = ("proj_a", "proj_b")
TYPES = ("deployment.succeeded", "deployment.failed", "project.created", "log.line")
FILTERS = st.lists(
    st.sampled_from(("deployment.*", "deployment.failed", "project.created", "log.*")),
    max_size=2,
    unique=True,
)

# One step of a random history: add an endpoint, disable one, or publish an event.
ADD = st.tuples(
    st.just("add"), st.sampled_from(PROJECTS), st.sampled_from(("live", "test")), FILTERS
)
DISABLE = st.tuples(st.just("disable"), st.integers(min_value=0, max_value=20))
PUBLISH = st.tuples(
    st.just("publish"),
    st.sampled_from(PROJECTS),
    st.sampled_from(("live", "test")),
    st.sampled_from(TYPES),
)

CROSSING = """
SELECT count(*) FROM {s}.deliveries d
JOIN {s}.events ev ON ev.id = d.event_id
JOIN {s}.endpoints e ON e.id = d.endpoint_id
WHERE ev.mode <> e.mode OR ev.project_id <> e.project_id
   OR d.mode <> ev.mode OR d.project_id <> ev.project_id
"""


@given(steps=st.lists(st.one_of(ADD, DISABLE, PUBLISH), min_size=1, max_size=25))
@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fan_out_never_crosses_modes_or_projects(
    engine: Engine, settings: Settings, steps: list[tuple[Any, ...]]
) -> None:
    run = secrets.token_hex(3)  # every example has its own projects
    endpoints: list[tuple[str, str, str, list[str]]] = []  # id, project, mode, filters
    expected: dict[str, set[str]] = {}
    with engine.begin() as conn:
        for step in steps:
            if step[0] == "add":
                _, project, mode, filters = step
                endpoint, _ = add_endpoint(
                    conn,
                    settings,
                    url="https://example.com/hook",
                    project_id=f"{project}_{run}",
                    event_types=filters,
                    mode=mode,
                )
                endpoints.append((endpoint.id, f"{project}_{run}", mode, filters))
            elif step[0] == "disable" and endpoints:
                disable_endpoint(conn, settings, endpoints[step[1] % len(endpoints)][0])
            elif step[0] == "publish":
                _, project, mode, event_type = step
                result = publish_event(
                    conn,
                    settings,
                    project_id=f"{project}_{run}",
                    type=event_type,
                    data={},
                    mode=mode,
                )
                # Expanded at once, as a dispatcher would just after the commit: the
                # endpoints it reaches are those subscribed now, not those added later.
                expand_events(conn, settings, [result.id])
                expected[result.id] = {
                    ep
                    for ep, ep_project, ep_mode, filters in endpoints
                    if ep_project == f"{project}_{run}"
                    and ep_mode == mode
                    and matches(filters, event_type)
                }
    with engine.connect() as conn:
        assert conn.execute(sql(CROSSING, settings.db_schema)).scalar_one() == 0
    for event_id, wanted in expected.items():
        assert {d.endpoint_id for d in deliveries(engine, settings, event_id)} == wanted


def test_the_database_refuses_a_delivery_that_crosses_modes_or_projects(
    engine: Engine, settings: Settings, project: str
) -> None:
    live_endpoint, _ = new_endpoint(engine, settings, "https://example.com/live", project)
    test_event = publish_one(engine, settings, project, mode="test")
    other_project = publish_one(engine, settings, project + "_other")
    insert = sql(
        "INSERT INTO {s}.deliveries (id, event_id, endpoint_id, project_id, mode, created_at, "
        "updated_at) VALUES (:id, :event, :endpoint, :project, :mode, now(), now())",
        settings.db_schema,
    )
    # Code that forgets the mode, or writes either side's: each is refused.
    for event, mode, owner in (
        (test_event, "test", project),
        (test_event, "live", project),
        (other_project, "live", project),
        (other_project, "live", project + "_other"),
    ):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                insert,
                {
                    "id": f"dlv_{secrets.token_hex(8)}",
                    "event": event,
                    "endpoint": live_endpoint,
                    "project": owner,
                    "mode": mode,
                },
            )


def test_a_test_event_says_so_and_reaches_only_test_endpoints(
    engine: Engine, settings: Settings, project: str
) -> None:
    live, _ = new_endpoint(engine, settings, "https://example.com/live", project)
    with engine.begin() as conn:
        test, _ = add_endpoint(
            conn, settings, url="https://example.com/test", project_id=project, mode="test"
        )

    test_event = publish_expanded(engine, settings, project, mode="test")
    live_event = publish_expanded(engine, settings, project)

    assert [d.endpoint_id for d in deliveries(engine, settings, test_event)] == [test.id]
    assert [d.endpoint_id for d in deliveries(engine, settings, live_event)] == [live]
    assert json.loads(_payload(engine, settings, test_event))["mode"] == "test"
    assert json.loads(_payload(engine, settings, live_event))["mode"] == "live"


def test_idempotency_keys_are_unique_per_project_and_mode(
    engine: Engine, settings: Settings, project: str
) -> None:
    def publish(mode: str) -> Any:
        with engine.begin() as conn:
            return publish_event(
                conn,
                settings,
                project_id=project,
                type="deployment.succeeded",
                data={},
                idempotency_key="deploy-42",
                mode=mode,
            )

    live, test, test_again = publish("live"), publish("test"), publish("test")

    assert not live.duplicate and not test.duplicate and live.id != test.id
    assert test_again.duplicate and test_again.id == test.id


def test_an_unknown_mode_is_refused(engine: Engine, settings: Settings, project: str) -> None:
    with pytest.raises(ValueError, match="mode must be 'live' or 'test'"):
        publish_one(engine, settings, project, mode="staging")


def _payload(engine: Engine, settings: Settings, event_id: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                sql("SELECT payload FROM {s}.events WHERE id = :id", settings.db_schema),
                {"id": event_id},
            ).scalar_one()
        )


# -- an existing deployment upgraded -----------------------------------------------------------


@pytest.fixture
def before_modes(service_urls: tuple[str, str]) -> Iterator[tuple[dict[str, str], Settings]]:
    env = make_env(service_urls)
    settings = Settings.from_env(env)
    migrate(settings, "0007")
    yield env, settings
    engine = create_engine(settings, pool_size=1)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE'))
    engine.dispose()


def test_rows_stored_before_modes_are_live_and_keep_their_bytes(
    before_modes: tuple[dict[str, str], Settings],
) -> None:
    env, settings = before_modes
    payload = (
        '{"id":"evt_old","type":"deployment.succeeded","created_at":"2026-11-30T10:00:00Z",'
        '"project_id":"proj_old","data":{}}'
    )
    engine = create_engine(settings, pool_size=1)
    try:
        with engine.begin() as conn:
            for statement in (
                "INSERT INTO {s}.endpoints (id, project_id, url, secrets, created_at, updated_at) "
                "VALUES ('ep_old', 'proj_old', 'https://example.com', '[]', now(), now())",
                "INSERT INTO {s}.events (id, project_id, type, payload, created_at) "
                "VALUES ('evt_old', 'proj_old', 'deployment.succeeded', :payload, now())",
                "INSERT INTO {s}.deliveries (id, event_id, endpoint_id, created_at, updated_at) "
                "VALUES ('dlv_old', 'evt_old', 'ep_old', now(), now())",
                "INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, number, trigger, "
                "started_at, duration_ms, request_url, request_headers) VALUES ('dlv_old', "
                "'evt_old', 'ep_old', 1, 'scheduled', now(), 5, 'https://example.com', '{}')",
            ):
                conn.execute(sql(statement, settings.db_schema), {"payload": payload})

        migrate(settings)

        assert _payload(engine, settings, "evt_old") == payload  # the exact bytes
        with engine.connect() as conn:
            row = conn.execute(
                sql("SELECT mode, project_id FROM {s}.deliveries", settings.db_schema)
            ).one()
        assert (row.mode, row.project_id) == ("live", "proj_old")
        with engine.connect() as conn:
            attempt = conn.execute(
                sql("SELECT mode, project_id FROM {s}.attempts", settings.db_schema)
            ).one()
        # Copied from its delivery (0015), so the API lists it from its own index.
        assert (attempt.mode, attempt.project_id) == ("live", "proj_old")
    finally:
        engine.dispose()
    shown = cli_ok(env, "event", "show", "evt_old", "--json")
    assert shown["event"]["mode"] == "live"
    assert cli_ok(env, "endpoint", "show", "ep_old", "--json")["mode"] == "live"


# -- the CLI -----------------------------------------------------------------------------------


def test_the_cli_creates_lists_and_publishes_by_mode(
    engine: Engine, settings: Settings, env: dict[str, str], project: str
) -> None:
    live = cli_ok(env, "endpoint", "add", "https://example.com/a", "--project", project, "--json")
    test = cli_ok(
        env,
        "endpoint",
        "add",
        "https://example.com/b",
        "--project",
        project,
        "--mode",
        "test",
        "--json",
    )
    assert (live["mode"], test["mode"]) == ("live", "test")

    listed = cli_ok(env, "endpoint", "list", "--project", project, "--mode", "test", "--json")
    assert [e["id"] for e in listed] == [test["id"]]
    both = cli_ok(env, "endpoint", "list", "--project", project, "--json")
    assert {e["id"] for e in both} == {live["id"], test["id"]}

    published = cli_ok(
        env, "publish", "deployment.succeeded", "--project", project, "--data", "{}",
        "--mode", "test", "--json",
    )  # fmt: skip
    assert published["mode"] == "test"
    expand(engine, settings, published["id"])  # no dispatcher runs here
    shown = cli_ok(env, "event", "show", published["id"], "--json")
    assert shown["event"]["mode"] == "test"
    assert [(d["endpoint_id"], d["mode"]) for d in shown["deliveries"]] == [(test["id"], "test")]

    refused = run_cli(env, "endpoint", "list", "--mode", "staging")
    assert refused.returncode == 2
