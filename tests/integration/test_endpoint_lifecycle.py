"""Updating and deleting endpoints, and listing a project's deliveries, against a real
Postgres, driven in-process (no dispatcher in this module's schema, so a test decides exactly
which claims exist): a claim taken before a delete sends nothing, a request that was on the
wire is recorded and leaves the delivery `cancelled`, the dispatcher cancels rather than
claims what a racing publish left behind, and `webhooks deliveries` filters as documented."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import assert_one_line_error, cli_ok, run_cli
from tests.support.deliveries import (
    attempts,
    claims_now,
    deliveries,
    execute_sql,
    new_endpoint,
    publish_expanded,
)
from webhooks import clock
from webhooks.claiming import release_held
from webhooks.database import sql
from webhooks.delivery import DeliveryOutcome
from webhooks.endpoints import delete_endpoint, get_endpoint, update_endpoint
from webhooks.errors import EndpointDeleted
from webhooks.messages import Claim
from webhooks.recording import RecordedAttempt, begin_attempt, record_attempt
from webhooks.replay import replay_event
from webhooks.settings import Settings

DEAD = "http://127.0.0.1:9/dead"


def _outcome(status: int | None, error_kind: str | None = None) -> DeliveryOutcome:
    return DeliveryOutcome(
        status=status,
        error_kind=error_kind,
        error_message=None if error_kind is None else f"{error_kind} (test)",
        duration=timedelta(milliseconds=5),
    )


def _attempt(
    engine: Engine, settings: Settings, claim: Claim, outcome: DeliveryOutcome
) -> RecordedAttempt:
    """Begin the attempt under ``claim`` and record ``outcome``, as a worker would."""
    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, clock.now())
    assert job is not None
    with engine.begin() as conn:
        return record_attempt(
            conn,
            settings,
            job,
            outcome=outcome,
            started_at=clock.now(),
            request_headers={},
            now=clock.now(),
        )


def test_a_claim_taken_before_a_delete_sends_nothing(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project)
    event_id = publish_expanded(engine, settings, project)
    [claim] = claims_now(engine, settings, event_id)  # the message is on its way to a worker

    with engine.begin() as conn:
        delete_endpoint(conn, settings, endpoint_id)

    with engine.begin() as conn:
        assert begin_attempt(conn, settings, claim, clock.now()) is None
        # A message that waited long renews its lease first: that path refuses too.
        late = clock.now() + settings.lease
        assert begin_attempt(conn, settings, claim, late) is None
    [delivery] = deliveries(engine, settings, event_id)
    assert (delivery.state, delivery.next_attempt_at, delivery.attempt_count) == (
        "cancelled",
        None,
        0,
    )
    [row] = execute_sql(
        engine,
        settings,
        "SELECT claim_token, lease_expires_at FROM {s}.deliveries WHERE event_id = :e",
        e=event_id,
    )
    assert tuple(row) == (None, None)


@pytest.mark.parametrize(
    ("outcome", "trigger"),
    [
        (_outcome(200), "scheduled"),
        (_outcome(500, "http_status"), "scheduled"),
        (_outcome(204), "replay"),
    ],
    ids=["2xx", "failure", "replay-2xx"],
)
def test_a_request_on_the_wire_at_the_delete_is_recorded_and_the_delivery_stays_cancelled(
    engine: Engine, settings: Settings, project: str, outcome: DeliveryOutcome, trigger: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project)
    event_id = publish_expanded(engine, settings, project)
    if trigger == "replay":
        with engine.begin() as conn:
            replay_event(conn, settings, event_id)
    [claim] = [c for c in claims_now(engine, settings, event_id) if c.trigger == trigger]
    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, clock.now())
    assert job is not None  # the request goes out now...

    with engine.begin() as conn:  # ...and the endpoint is deleted before its answer
        delete_endpoint(conn, settings, endpoint_id)
    with engine.begin() as conn:
        recorded = record_attempt(
            conn,
            settings,
            job,
            outcome=outcome,
            started_at=clock.now(),
            request_headers={},
            now=clock.now(),
        )

    assert recorded.state == "cancelled"
    [delivery] = deliveries(engine, settings, event_id)
    assert (delivery.state, delivery.next_attempt_at) == ("cancelled", None)
    assert [(a.number, a.response_status, a.trigger) for a in delivery.attempts] == [
        (1, outcome.status, trigger)
    ]


def test_a_replay_queued_against_a_delete_is_closed_not_sent(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project)
    event_id = publish_expanded(engine, settings, project)
    with engine.begin() as conn:
        delete_endpoint(conn, settings, endpoint_id)
        # Queued by a replay that read the endpoint just before the delete committed.
        conn.execute(
            sql(
                "INSERT INTO {s}.replays (delivery_id, requested_at) "
                "SELECT id, :now FROM {s}.deliveries WHERE event_id = :e",
                settings.db_schema,
            ),
            {"now": clock.now(), "e": event_id},
        )
    [claim] = claims_now(engine, settings, event_id)
    assert claim.trigger == "replay"

    with engine.begin() as conn:
        assert begin_attempt(conn, settings, claim, clock.now()) is None

    [row] = execute_sql(
        engine,
        settings,
        "SELECT r.state, r.claim_token FROM {s}.replays r JOIN {s}.deliveries d "
        "ON d.id = r.delivery_id WHERE d.event_id = :e",
        e=event_id,
    )
    assert tuple(row) == ("done", None)  # closed: never reaped and claimed again


def test_a_delivery_a_racing_publish_left_to_a_deleted_endpoint_is_cancelled_not_claimed(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project)
    with engine.begin() as conn:
        delete_endpoint(conn, settings, endpoint_id)
    event_id = publish_expanded(engine, settings, project)
    assert deliveries(engine, settings, event_id) == []  # fan-out skips it
    # What a publish that read the endpoint before the delete committed would have written.
    execute_sql(
        engine,
        settings,
        "INSERT INTO {s}.deliveries (id, event_id, endpoint_id, project_id, mode, state, "
        "next_attempt_at, created_at, updated_at) VALUES ('dlv_race_' || :e, :e, :ep, :p, "
        "'live', 'pending', :now, :now, :now) RETURNING id",
        e=event_id,
        ep=endpoint_id,
        p=project,
        now=clock.now(),
    )

    assert claims_now(engine, settings, event_id) == []
    with engine.begin() as conn:
        release_held(conn, settings, clock.now())
    assert claims_now(engine, settings, event_id) == []
    [delivery] = deliveries(engine, settings, event_id)
    assert (delivery.state, delivery.next_attempt_at) == ("cancelled", None)


def test_a_new_url_makes_waiting_retries_due_now_and_keeps_mode_and_project(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project, mode="test")
    event_id = publish_expanded(engine, settings, project, mode="test")
    [claim] = claims_now(engine, settings, event_id)
    failed = _attempt(engine, settings, claim, _outcome(None, "connect"))
    assert failed.state == "pending"
    later = clock.now() + timedelta(hours=2)  # as if deep into the backoff
    execute_sql(
        engine,
        settings,
        "UPDATE {s}.deliveries SET next_attempt_at = :at WHERE event_id = :e RETURNING id",
        at=later,
        e=event_id,
    )

    with engine.begin() as conn:
        # Only the description: the schedule is left alone.
        update_endpoint(conn, settings, endpoint_id, description="billing hooks")
    assert deliveries(engine, settings, event_id)[0].next_attempt_at == later
    with engine.begin() as conn:
        updated = update_endpoint(conn, settings, endpoint_id, url="http://127.0.0.1:9/fixed")

    assert (updated.url, updated.mode, updated.project_id) == (
        "http://127.0.0.1:9/fixed",
        "test",
        project,
    )
    assert updated.description == "billing hooks"
    [delivery] = deliveries(engine, settings, event_id)
    assert delivery.state == "pending"
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= clock.now()
    [claim] = claims_now(engine, settings, event_id)
    with engine.begin() as conn:
        job = begin_attempt(conn, settings, claim, clock.now())
    assert job is not None and job.url == "http://127.0.0.1:9/fixed"


def test_new_filters_apply_to_events_published_afterwards(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project, ("deployment.*",))
    with engine.begin() as conn:
        update_endpoint(conn, settings, endpoint_id, event_types=["project.created"])
    assert deliveries(engine, settings, publish_expanded(engine, settings, project)) == []
    routed = publish_expanded(engine, settings, project, "project.created")
    assert [d.endpoint_id for d in deliveries(engine, settings, routed)] == [endpoint_id]
    with engine.begin() as conn:
        assert update_endpoint(conn, settings, endpoint_id, event_types=[]).event_types == ()


def test_a_deleted_endpoint_can_be_shown_but_not_changed_or_replayed_to(
    engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project)
    event_id = publish_expanded(engine, settings, project)
    with engine.begin() as conn:
        deleted = delete_endpoint(conn, settings, endpoint_id)
    assert deleted.deleted_at is not None

    with engine.connect() as conn:
        shown = get_endpoint(conn, settings, endpoint_id, include_deleted=True)
        assert shown.deleted_at == deleted.deleted_at
        with pytest.raises(EndpointDeleted):
            get_endpoint(conn, settings, endpoint_id)
        with pytest.raises(EndpointDeleted):
            update_endpoint(conn, settings, endpoint_id, url="http://127.0.0.1:9/other")
        with pytest.raises(EndpointDeleted):
            delete_endpoint(conn, settings, endpoint_id)
        with pytest.raises(EndpointDeleted):
            replay_event(conn, settings, event_id, endpoint_id=endpoint_id)
        # All its endpoints: none left.
        assert replay_event(conn, settings, event_id).queued == 0


def test_deliveries_lists_a_project_newest_first_with_filters(
    engine: Engine, settings: Settings, env: dict[str, str], project: str
) -> None:
    live_a, _ = new_endpoint(engine, settings, DEAD + "/a", project)
    live_b, _ = new_endpoint(engine, settings, DEAD + "/b", project)
    test_t, _ = new_endpoint(engine, settings, DEAD + "/t", project, mode="test")
    other, _ = new_endpoint(engine, settings, DEAD + "/o", project + "x")
    old = publish_expanded(engine, settings, project)
    simulated = publish_expanded(engine, settings, project, "project.created", mode="test")
    publish_expanded(engine, settings, project + "x")
    outcomes = {
        live_a: _outcome(200),
        live_b: _outcome(500, "http_status"),
        test_t: _outcome(None, "timeout"),
    }
    for claim in claims_now(engine, settings, old, simulated):
        _attempt(engine, settings, claim, outcomes[claim.endpoint_id])
    execute_sql(
        engine,
        settings,
        "UPDATE {s}.deliveries SET created_at = created_at - interval '3 hours' "
        "WHERE event_id = :e RETURNING id",
        e=old,
    )
    new = publish_expanded(engine, settings, project)

    listed = cli_ok(env, "deliveries", "--project", project, "--json")
    assert [(d["event_id"], d["endpoint_id"]) for d in listed] == [
        *sorted([(new, live_a), (new, live_b)], key=lambda p: _id(listed, *p), reverse=True),
        (simulated, test_t),
        *sorted([(old, live_a), (old, live_b)], key=lambda p: _id(listed, *p), reverse=True),
    ]
    first = listed[0]
    assert set(first) == {
        "id",
        "event_id",
        "event_type",
        "endpoint_id",
        "project_id",
        "mode",
        "state",
        "attempt_count",
        "last_status",
        "last_error_kind",
        "last_error_message",
        "next_attempt_at",
        "created_at",
        "updated_at",
    }
    assert first["id"].startswith("dlv_") and first["project_id"] == project
    assert (first["state"], first["attempt_count"], first["last_status"]) == ("pending", 0, None)

    [succeeded] = cli_ok(env, "deliveries", "--project", project, "--state", "succeeded", "--json")
    assert (succeeded["endpoint_id"], succeeded["event_type"], succeeded["last_status"]) == (
        live_a,
        "deployment.succeeded",
        200,
    )
    assert succeeded["next_attempt_at"] is None
    by_b = cli_ok(env, "deliveries", "--project", project, "--endpoint", live_b, "--json")
    assert [d["event_id"] for d in by_b] == [new, old]
    retried = by_b[1]
    assert (retried["state"], retried["attempt_count"], retried["last_status"]) == (
        "pending",
        1,
        500,
    )
    assert retried["last_error_kind"] == "http_status" and retried["next_attempt_at"]
    [sandboxed] = cli_ok(env, "deliveries", "--project", project, "--mode", "test", "--json")
    assert (sandboxed["mode"], sandboxed["last_error_kind"]) == ("test", "timeout")
    assert sandboxed["last_error_message"] == "timeout (test)"
    recent = cli_ok(env, "deliveries", "--project", project, "--since", "2h", "--json")
    assert {d["event_id"] for d in recent} == {new, simulated}
    since = listed[2]["created_at"]  # RFC 3339 too
    assert len(cli_ok(env, "deliveries", "--project", project, "--since", since, "--json")) == 3
    assert cli_ok(env, "deliveries", "--project", project, "--limit", "1", "--json") == listed[:1]

    text = cli_ok(env, "deliveries", "--project", project, "--endpoint", live_b)
    assert "NEXT ATTEMPT" in text and "500 http_status" in text and old in text

    # A deleted endpoint's deliveries stay listed, cancelled.
    with engine.begin() as conn:
        delete_endpoint(conn, settings, live_b)
    cancelled = cli_ok(env, "deliveries", "--project", project, "--state", "cancelled", "--json")
    assert [(d["endpoint_id"], d["event_id"]) for d in cancelled] == [(live_b, new), (live_b, old)]

    assert_one_line_error(
        run_cli(env, "deliveries", "--project", project, "--endpoint", other), 1, "belongs to"
    )
    assert_one_line_error(
        run_cli(env, "deliveries", "--project", project, "--state", "lost"), 2, "--state"
    )
    assert_one_line_error(
        run_cli(env, "deliveries", "--project", project, "--since", "yesterday"), 1, "--since"
    )


def _id(listed: list[dict[str, Any]], event_id: str, endpoint_id: str) -> str:
    return next(
        d["id"] for d in listed if (d["event_id"], d["endpoint_id"]) == (event_id, endpoint_id)
    )


def test_endpoint_update_and_delete_from_the_command_line(
    engine: Engine, settings: Settings, env: dict[str, str], project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project)
    event_id = publish_expanded(engine, settings, project)

    refused = run_cli(env, "endpoint", "update", endpoint_id, "--url", "ftp://example.com/h")
    assert_one_line_error(refused, 1, "https")
    assert_one_line_error(run_cli(env, "endpoint", "update", endpoint_id), 2, "--url")
    literal = run_cli(env, "endpoint", "update", endpoint_id, "--url", "https://10.0.0.1/h")
    assert_one_line_error(literal, 1, "WEBHOOKS_ALLOWED_NETWORKS")
    assert cli_ok(env, "endpoint", "show", endpoint_id, "--json")["url"] == DEAD

    result = run_cli(
        env,
        "endpoint",
        "update",
        endpoint_id,
        "--events",
        "deployment.*,deploymnt.failed",
        "--description",
        "billing",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert "warning: deploymnt.failed is not a known event type" in result.stderr
    shown = cli_ok(env, "endpoint", "show", endpoint_id, "--json")
    assert shown["event_types"] == ["deployment.*", "deploymnt.failed"]
    assert (shown["description"], shown["deleted_at"], shown["url"]) == ("billing", None, DEAD)

    deleted = cli_ok(env, "endpoint", "delete", endpoint_id, "--json")
    assert deleted["id"] == endpoint_id and deleted["deleted_at"]
    assert endpoint_id not in [e["id"] for e in cli_ok(env, "endpoint", "list", "--json")]
    shown = cli_ok(env, "endpoint", "show", endpoint_id, "--json")
    assert shown["deleted_at"] == deleted["deleted_at"] and "secret" not in shown
    assert "deleted at" in cli_ok(env, "endpoint", "show", endpoint_id)
    [delivery] = cli_ok(env, "event", "show", event_id, "--json")["deliveries"]
    assert delivery["state"] == "cancelled"
    for args in (
        ("endpoint", "update", endpoint_id, "--description", "again"),
        ("endpoint", "delete", endpoint_id),
        ("endpoint", "enable", endpoint_id),
        ("endpoint", "rotate-secret", endpoint_id),
        ("endpoint", "check", endpoint_id),
        ("replay", event_id, "--endpoint", endpoint_id),
    ):
        assert_one_line_error(run_cli(env, *args), 1, "was deleted")
    assert attempts(engine, settings, event_id) == []
