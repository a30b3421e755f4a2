"""The sandbox through the real processes: a test event reaches only test endpoints, signed
and marked `"mode": "test"`, and `sandbox advance` walks a failing test delivery through the
real retry schedule (not the tests' short one) to exhaustion in seconds, never touching a live
row."""

from __future__ import annotations

import json
from collections.abc import Callable

import standardwebhooks
from sqlalchemy.engine import Engine

from tests.support.cli import cli_ok, run_cli
from tests.support.deliveries import deliveries, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.catalogue import example_data
from webhooks.models import Delivery
from webhooks.settings import Settings

# The production schedule: 11 attempts over 72 h (without jitter, which can push the 11th
# past the window).
STACK_ENV = {
    "WEBHOOKS_RETRY_SCHEDULE": "1m,5m,30m,2h,6h,12h",
    "WEBHOOKS_RETRY_WINDOW": "72h",
    "WEBHOOKS_RETRY_JITTER": "0",
}


def _add(env: dict[str, str], url: str, project: str, mode: str) -> str:
    added = cli_ok(env, "endpoint", "add", url, "--project", project, "--mode", mode, "--json")
    return str(added["id"])


def _settled(engine: Engine, settings: Settings, event_id: str, attempts: int) -> Delivery:
    def recorded() -> Delivery | None:
        found = deliveries(engine, settings, event_id)
        if not found:
            return None  # not expanded yet: the dispatcher does it just after the commit
        [delivery] = found
        done = delivery.attempt_count >= attempts and delivery.state != "delivering"
        return delivery if done else None

    return wait_for(recorded, timeout=15, what=f"attempt {attempts} of {event_id}")


def test_advance_walks_a_failing_test_delivery_to_exhaustion_and_leaves_live_alone(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    stack: Stack,
    project: str,
    path: str,
    sandbox_advance: Callable[[str, str], int],
) -> None:
    receiver.script(path + "/test", [500])
    receiver.script(path + "/live", [500])
    test_endpoint = _add(env, receiver.url(path + "/test"), project, "test")
    _add(env, receiver.url(path + "/live"), project, "live")
    test_event = cli_ok(env, "trigger", "deployment.failed", "--project", project, "--json")["id"]
    live_event = publish_one(engine, settings, project)
    live_before = _settled(engine, settings, live_event, 1)
    _settled(engine, settings, test_event, 1)

    moved = cli_ok(env, "sandbox", "advance", "72h", "--project", project, "--json")
    assert moved["moved"] == 1
    for attempt in range(2, 12):
        _settled(engine, settings, test_event, attempt)
        if attempt < 11:
            assert sandbox_advance(project, "72h") == 1

    [exhausted] = wait_for_state(engine, settings, test_event, "failed")
    assert [a.number for a in exhausted.attempts] == list(range(1, 12))  # the real schedule
    assert cli_ok(env, "sandbox", "advance", "72h", "--project", project, "--json")["moved"] == 0
    [live_after] = deliveries(engine, settings, live_event)
    assert (live_after.attempt_count, live_after.next_attempt_at) == (
        1,
        live_before.next_attempt_at,
    )
    assert len(receiver.received(path + "/live")) == 1
    bodies = [json.loads(r.body) for r in receiver.received(path + "/test")]
    assert len(bodies) == 11 and all(b["mode"] == "test" for b in bodies)
    assert {d.endpoint_id for d in deliveries(engine, settings, test_event)} == {test_endpoint}


def test_trigger_sends_a_signed_example_to_test_endpoints_only(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    stack: Stack,
    project: str,
    path: str,
) -> None:
    test = cli_ok(
        env, "endpoint", "add", receiver.url(path + "/test"), "--project", project,
        "--mode", "test", "--events", "project.*", "--json",
    )  # fmt: skip
    _add(env, receiver.url(path + "/live"), project, "live")

    # Its filter wants project.* only: a plain trigger of a deployment type reaches no one.
    unrouted = run_cli(env, "trigger", "deployment.succeeded", "--project", project, "--json")
    assert unrouted.returncode == 0 and json.loads(unrouted.stdout)["deliveries"] == 0
    assert "no test endpoint" in unrouted.stderr
    # Aimed at the endpoint, it is delivered whatever the filter says.
    sent = cli_ok(
        env, "trigger", "deployment.succeeded", "--project", project,
        "--endpoint", test["id"], "--json",
    )  # fmt: skip
    assert (sent["mode"], sent["deliveries"]) == ("test", 1)
    wait_for_state(engine, settings, sent["id"], "succeeded")

    [request] = receiver.received(path + "/test")
    envelope = standardwebhooks.Webhook(test["secret"]).verify(request.body, request.headers)
    assert envelope["mode"] == "test" and envelope["type"] == "deployment.succeeded"
    assert envelope["data"] == example_data("deployment.succeeded")
    assert receiver.received(path + "/live") == []

    live_endpoint = cli_ok(
        env, "endpoint", "list", "--project", project, "--mode", "live", "--json"
    )
    refused = run_cli(
        env, "trigger", "deployment.succeeded", "--project", project,
        "--endpoint", live_endpoint[0]["id"],
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("error:") and "live endpoint" in refused.stderr


def test_advance_refuses_a_duration_that_is_not_one(env: dict[str, str], project: str) -> None:
    result = run_cli(env, "sandbox", "advance", "soon", "--project", project)

    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "duration" in result.stderr
