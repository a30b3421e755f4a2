"""Replays queued once, recoveries held, cancelled, sent to endpoints created later, pruned:
through the CLI, a real dispatcher and worker, and a real receiver."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import cli_ok, run_cli
from tests.support.deliveries import attempts, new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.processes import settle
from tests.support.receivers import Receiver
from webhooks import clock
from webhooks.endpoints import disable_endpoint, enable_endpoint
from webhooks.recovery import get_recovery
from webhooks.replay import replay_event
from webhooks.settings import Settings

pytestmark = pytest.mark.usefixtures("stack")

STACK_ENV = {"WEBHOOKS_RETRY_SCHEDULE": "1s", "WEBHOOKS_RETRY_WINDOW": "1s"}


def status(env: dict[str, str], recovery_id: str) -> Any:
    return cli_ok(env, "recover", "status", recovery_id, "--json")


def replay_attempts(engine: Engine, settings: Settings, event_id: str) -> list[Any]:
    return [a for a in attempts(engine, settings, event_id) if a.trigger == "replay"]


def test_a_delivery_queued_for_replay_is_not_queued_again(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    endpoint, _ = new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)
    wait_for(lambda: len(receiver.received(path)) == 1, what="the first delivery")
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint)  # the replay stays queued
    first = cli_ok(env, "replay", event_id, "--json")
    second = cli_ok(env, "replay", event_id, "--json")
    assert first == {"queued": 1}
    assert second == {"queued": 0, "already_queued": 1}
    assert "1 already queued" in cli_ok(env, "replay", event_id)
    with engine.begin() as conn:
        assert replay_event(conn, settings, event_id).queued == 0
        enable_endpoint(conn, settings, endpoint)
    wait_for(lambda: replay_attempts(engine, settings, event_id), what="the replay")
    settle(1.5)
    assert len(replay_attempts(engine, settings, event_id)) == 1
    assert len(receiver.received(path)) == 2


def test_a_recovery_to_a_disabled_endpoint_is_held_then_sent_when_it_is_enabled(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    receiver.script(path, [500])
    endpoint, _ = new_endpoint(engine, settings, receiver.url(path), project)
    events = [publish_one(engine, settings, project, data={"i": i}) for i in range(4)]
    for event_id in events:
        wait_for_state(engine, settings, event_id, "failed")
    cli_ok(env, "endpoint", "disable", endpoint)
    receiver.script(path, [200])

    dry = cli_ok(env, "recover", "--project", project, "--since", "1h", "--dry-run", "--json")
    assert dry == {"total": 4, "dry_run": True}
    started = cli_ok(
        env,
        "recover",
        "--project",
        project,
        "--endpoint",
        endpoint,
        "--since",
        "1h",
        "--no-wait",
        "--json",
    )
    assert started["id"].startswith("rec_") and started["state"] == "running"
    assert started["total"] == 4
    held = wait_for(
        lambda: (s := status(env, started["id"]))["held"] == 4 and s, what="four held replays"
    )
    assert held["state"] == "running" and held["sent"] == 0
    settle(1.0)
    assert len(receiver.received(path)) == 4  # nothing sent while disabled

    cli_ok(env, "endpoint", "enable", endpoint)
    done = wait_for(lambda: (s := status(env, started["id"]))["state"] == "done" and s, what="done")
    assert {k: done[k] for k in ("total", "queued", "sent", "succeeded", "failed", "held")} == {
        "total": 4,
        "queued": 4,
        "sent": 4,
        "succeeded": 4,
        "failed": 0,
        "held": 0,
    }
    for event_id in events:
        assert len(replay_attempts(engine, settings, event_id)) == 1


def test_cancelling_a_recovery_drops_its_unsent_replays(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    endpoint, _ = new_endpoint(engine, settings, receiver.url(path), project)
    events = [publish_one(engine, settings, project, data={"i": i}) for i in range(3)]
    wait_for(lambda: len(receiver.received(path)) == 3, what="three deliveries")
    cli_ok(env, "endpoint", "disable", endpoint)
    started = cli_ok(
        env,
        "recover",
        "--project",
        project,
        "--since",
        "1h",
        "--state",
        "all",
        "--no-wait",
        "--json",
    )
    wait_for(lambda: status(env, started["id"])["held"] == 3, what="three held replays")
    assert "cancelled" in cli_ok(env, "recover", "cancel", started["id"])
    cancelled = status(env, started["id"])
    assert (cancelled["state"], cancelled["queued"], cancelled["sent"]) == ("cancelled", 0, 0)
    cli_ok(env, "endpoint", "enable", endpoint)
    settle(2.5)  # held rows are released within 2 s of an enable
    assert len(receiver.received(path)) == 3
    assert all(not replay_attempts(engine, settings, e) for e in events)
    # Cancelling again, or a finished recovery, changes nothing and is not an error.
    assert cli_ok(env, "recover", "cancel", started["id"], "--json")["state"] == "cancelled"
    missing = run_cli(env, "recover", "status", "rec_missing")
    assert missing.returncode == 1 and "rec_missing does not exist" in missing.stderr


def test_include_unrouted_sends_events_to_an_endpoint_created_after_them_and_never_across_modes(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    events = [publish_one(engine, settings, project, data={"i": i}) for i in range(3)]
    other_type = publish_one(engine, settings, project, "project.created", data={})
    late, _ = new_endpoint(
        engine, settings, receiver.url(path + "/late"), project, ("deployment.*",)
    )
    sandbox, _ = new_endpoint(engine, settings, receiver.url(path + "/test"), project, mode="test")
    # Without --include-unrouted there is nothing to send: it never had a delivery.
    plain = cli_ok(
        env,
        "recover",
        "--project",
        project,
        "--endpoint",
        late,
        "--since",
        "1h",
        "--state",
        "all",
        "--dry-run",
        "--json",
    )
    assert plain["total"] == 0
    done = cli_ok(
        env,
        "recover",
        "--project",
        project,
        "--endpoint",
        late,
        "--since",
        "1h",
        "--state",
        "all",
        "--include-unrouted",
        "--json",
    )
    assert (done["state"], done["total"], done["succeeded"]) == ("done", 3, 3)
    received = {r.headers["webhook-id"] for r in receiver.received(path + "/late")}
    assert received == set(events)  # its filter left project.created out
    assert other_type not in received
    # A test-mode endpoint never gets live events, with or without --endpoint.
    for args in (["--endpoint", sandbox], ["--mode", "test"]):
        result = cli_ok(
            env,
            "recover",
            "--project",
            project,
            *args,
            "--since",
            "1h",
            "--state",
            "all",
            "--include-unrouted",
            "--json",
        )
        assert (result["state"], result["total"]) == ("done", 0)
    crossing = run_cli(
        env,
        "recover",
        "--project",
        project,
        "--endpoint",
        sandbox,
        "--mode",
        "live",
        "--since",
        "1h",
    )
    assert crossing.returncode == 1 and "never cross" in crossing.stderr
    assert receiver.received(path + "/test") == []


def test_prune_deletes_finished_recoveries_and_keeps_running_ones(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    endpoint, _ = new_endpoint(engine, settings, receiver.url(path), project)
    publish_one(engine, settings, project)
    wait_for(lambda: len(receiver.received(path)) == 1, what="the delivery")
    finished = cli_ok(
        env, "recover", "--project", project, "--since", "1h", "--state", "all", "--json"
    )
    assert finished["state"] == "done"
    cli_ok(env, "endpoint", "disable", endpoint)
    running = cli_ok(
        env,
        "recover",
        "--project",
        project,
        "--since",
        "1h",
        "--state",
        "all",
        "--no-wait",
        "--json",
    )
    settle(1.1)
    dry = cli_ok(env, "prune", "--older-than", "1s", "--dry-run", "--json")
    assert dry["recoveries"] >= 1
    pruned = cli_ok(env, "prune", "--older-than", "1s", "--json")
    assert pruned["recoveries"] >= 1
    assert run_cli(env, "recover", "status", finished["id"]).returncode == 1
    with engine.connect() as conn:
        assert get_recovery(conn, settings, running["id"], clock.now()).state == "running"
    cli_ok(env, "recover", "cancel", running["id"])
