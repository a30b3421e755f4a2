"""`endpoint update` and `endpoint delete` with the real dispatcher and worker running and a
real receiver: pending deliveries follow a new URL; a deleted endpoint's deliveries are
cancelled and nothing more reaches it, except a request already on the wire, which is
recorded while its delivery stays `cancelled`."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import assert_one_line_error, cli_ok, run_cli
from tests.support.deliveries import attempts, deliveries, new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.receivers import Receiver
from webhooks.settings import Settings

# Retries every second to the dead URL while two CLI commands run: on a loaded machine five
# refused connections would open its circuit breaker for 30 s, longer than the wait for the
# delivery at the new URL. The breaker has tests of its own; here it would only add time.
STACK_ENV = {"WEBHOOKS_RETRY_SCHEDULE": "1s", "WEBHOOKS_BREAKER_THRESHOLD": "1000"}
DEAD = "http://127.0.0.1:9/dead"

pytestmark = pytest.mark.usefixtures("stack")


def a_retry_interval_passes(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    """Wait until the dispatcher and worker have provably made a retry (1 s) since now.

    A control endpoint of another project fails once, then succeeds: once it has, anything
    still due for a retry was attempted too (a poll with a deadline instead of a sleep).
    """
    path = f"/control/{project}"
    receiver.script(path, [500, 200])
    new_endpoint(engine, settings, receiver.url(path), f"{project}_control")
    event_id = publish_one(engine, settings, f"{project}_control")
    wait_for_state(engine, settings, event_id, "succeeded")


def wait_for_attempts(engine: Engine, settings: Settings, event_id: str, n: int) -> None:
    wait_for(
        lambda: len(attempts(engine, settings, event_id)) >= n,
        what=f"{n} attempts of {event_id}",
    )


def test_pending_deliveries_go_to_the_new_url(
    engine: Engine,
    settings: Settings,
    env: dict[str, str],
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, DEAD, project)
    event_id = publish_one(engine, settings, project)
    wait_for_attempts(engine, settings, event_id, 1)

    refused = run_cli(env, "endpoint", "update", endpoint_id, "--url", "not a url")
    assert_one_line_error(refused, 1, "endpoint URL")
    updated = cli_ok(env, "endpoint", "update", endpoint_id, "--url", receiver.url(path), "--json")

    assert (updated["url"], updated["project_id"], updated["mode"]) == (
        receiver.url(path),
        project,
        "live",
    )
    wait_for_state(engine, settings, event_id, "succeeded")
    assert len(receiver.received(path)) == 1
    tried = attempts(engine, settings, event_id)
    assert {a.request_url for a in tried[:-1]} == {DEAD}
    assert (tried[-1].request_url, tried[-1].response_status) == (receiver.url(path), 200)


def test_deleting_cancels_pending_deliveries_and_nothing_is_sent_afterwards(
    engine: Engine,
    settings: Settings,
    env: dict[str, str],
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    receiver.script(path, [500])
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)
    wait_for_attempts(engine, settings, event_id, 1)

    cli_ok(env, "endpoint", "delete", endpoint_id, "--json")
    sent = len(receiver.received(path))
    later = publish_one(engine, settings, project)  # no longer fans out to it
    a_retry_interval_passes(engine, settings, receiver, project)

    assert len(receiver.received(path)) == sent
    [delivery] = deliveries(engine, settings, event_id)
    assert (delivery.state, delivery.next_attempt_at) == ("cancelled", None)
    assert deliveries(engine, settings, later) == []
    assert endpoint_id not in [
        e["id"] for e in cli_ok(env, "endpoint", "list", "--project", project, "--json")
    ]
    # Its attempts stay readable, and name an endpoint that can still be shown.
    shown = cli_ok(env, "attempts", event_id, "--json")
    assert len(shown) == delivery.attempt_count >= 1
    assert {(a["endpoint_id"], a["response_status"]) for a in shown} == {(endpoint_id, 500)}
    assert cli_ok(env, "endpoint", "show", endpoint_id, "--json")["deleted_at"]
    assert cli_ok(env, "replay", event_id, "--json") == {"queued": 0}


def test_a_request_on_the_wire_at_the_delete_is_recorded_and_nothing_follows(
    engine: Engine,
    settings: Settings,
    env: dict[str, str],
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    slow_ok, slow_failing = f"{path}/ok", f"{path}/failing"
    for slow, status in ((slow_ok, 200), (slow_failing, 503)):
        receiver.script(slow, [status])
        # Long enough for two `webhooks endpoint delete` processes to start and commit on a
        # loaded CI machine while both requests are still on the wire (the deadline is 10 s).
        receiver.delay(slow, 6.0)
    ok_id, _ = new_endpoint(engine, settings, receiver.url(slow_ok), project)
    failing_id, _ = new_endpoint(engine, settings, receiver.url(slow_failing), project)
    event_id = publish_one(engine, settings, project)
    wait_for(
        lambda: receiver.received(slow_ok) and receiver.received(slow_failing),
        what="both requests on the wire",
    )

    cli_ok(env, "endpoint", "delete", ok_id, "--json")
    cli_ok(env, "endpoint", "delete", failing_id, "--json")
    wait_for_attempts(engine, settings, event_id, 2)
    a_retry_interval_passes(engine, settings, receiver, project)

    found = {d.endpoint_id: d for d in deliveries(engine, settings, event_id)}
    assert {e: d.state for e, d in found.items()} == {ok_id: "cancelled", failing_id: "cancelled"}
    assert [(a.number, a.response_status) for a in found[ok_id].attempts] == [(1, 200)]
    assert [(a.number, a.response_status) for a in found[failing_id].attempts] == [(1, 503)]
    assert len(receiver.received(slow_ok)) == len(receiver.received(slow_failing)) == 1
