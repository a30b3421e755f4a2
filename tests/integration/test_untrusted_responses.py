"""What a receiver sends back, and what our guard found, as stored and as shown.

Real attempts (a real receiver, the real sender and SSRF guard, recorded in a real Postgres),
then read back as the CLI shows them to operators and as the customer-facing faces must:
headers are stored bounded, control characters never reach a terminal raw, and a blocked
attempt names its internal address to operators only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from tests.helpers import attempts, cli_ok, new_endpoint, publish_one, run_cli
from tests.http_receivers import ESCAPES_BODY, BehaviourServer
from webhooks import clock
from webhooks.attempts import run_attempt
from webhooks.claiming import claim_due
from webhooks.database import sql
from webhooks.delivery import MAX_RESPONSE_HEADER_BYTES, TRUNCATED_HEADERS_KEY, HttpSender
from webhooks.models import Attempt, customer_error_message
from webhooks.settings import Settings


@pytest.fixture(scope="module")
def server() -> Iterator[BehaviourServer]:
    receiver = BehaviourServer().start()
    yield receiver
    receiver.stop()


def attempt_once(
    engine: Engine, settings: Settings, url: str, project: str, sender: HttpSender
) -> tuple[str, Attempt]:
    """Publish one event to a new endpoint at ``url`` and make its first attempt."""
    new_endpoint(engine, settings, url, project)
    event_id = publish_one(engine, settings, project)
    with engine.begin() as conn:
        batch = claim_due(conn, settings, clock.now(), 100)
    [claim] = [c for c in batch.claims if c.event_id == event_id]
    run_attempt(engine, sender, settings, claim)
    [attempt] = attempts(engine, settings, event_id)
    return event_id, attempt


def stored_headers(engine: Engine, settings: Settings, event_id: str) -> dict[str, str]:
    with engine.connect() as conn:
        headers: dict[str, str] = conn.execute(
            sql(
                "SELECT response_headers FROM {s}.attempts WHERE event_id = :event_id",
                settings.db_schema,
            ),
            {"event_id": event_id},
        ).scalar_one()
    return headers


def test_a_receiver_sending_75_kb_of_headers_has_8_kib_stored_and_marked(
    engine: Engine, settings: Settings, server: BehaviourServer, project: str
) -> None:
    with HttpSender(allowed_networks=settings.allowed_networks) as sender:
        event_id, attempt = attempt_once(
            engine, settings, server.url("/many-headers"), project, sender
        )

    assert (attempt.response_status, attempt.error_kind) == (200, None)
    headers = stored_headers(engine, settings, event_id)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    assert size <= MAX_RESPONSE_HEADER_BYTES
    assert "x-filler-0" in headers and "x-filler-29" not in headers
    assert any(value.endswith("[truncated]") for value in headers.values())
    assert "bytes of response headers received" in headers[TRUNCATED_HEADERS_KEY]


def test_control_characters_in_a_body_are_escaped_in_tables_and_json(
    engine: Engine, settings: Settings, env: dict[str, str], server: BehaviourServer, project: str
) -> None:
    with HttpSender(allowed_networks=settings.allowed_networks) as sender:
        event_id, attempt = attempt_once(engine, settings, server.url("/escapes"), project, sender)
    assert attempt.response_body == ESCAPES_BODY  # stored as received

    for command in (["attempts", event_id], ["event", "show", event_id]):
        table = stdout(env, *command)
        assert not any(c in table for c in "\x1b\x9b\x07\r\x7f"), repr(table)
        assert "\\x1b[2J" in table and "\\x9b31m" in table

        text = stdout(env, *command, "--json")
        assert not any(c in text for c in "\x1b\x9b\x07\r\x7f"), repr(text)
        assert "\\u009b" in text and "\\u007f" in text
        found = json.loads(text)
        shown = found if isinstance(found, list) else found["deliveries"][0]["attempts"]
        assert [a["response_body"] for a in shown] == [ESCAPES_BODY]  # the same text, escaped


def stdout(env: dict[str, str], *args: str) -> str:
    result = run_cli(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_blocked_attempt_names_the_internal_address_to_operators_only(
    engine: Engine, settings: Settings, env: dict[str, str], server: BehaviourServer, project: str
) -> None:
    # localhost is a name (accepted at creation) that resolves to loopback, which this
    # sender's policy (production's: nothing opened) refuses at the attempt.
    with HttpSender(allowed_networks=()) as sender:
        event_id, attempt = attempt_once(
            engine, settings, server.url("/ok", host="localhost"), project, sender
        )

    assert attempt.error_kind == "blocked"
    assert server.seen("/ok") == []
    # Operators: the stored message, as the CLI shows it, names the address and the setting.
    [shown] = cli_ok(env, "attempts", event_id, "--json")
    assert "localhost resolves to" in shown["error_message"]
    assert "WEBHOOKS_ALLOWED_NETWORKS" in shown["error_message"]
    # Customers: the host they registered, and no address of ours.
    customer = customer_error_message(attempt)
    assert customer == (
        "localhost resolves to an address that is not publicly routable, so nothing was sent"
    )
    for internal in ("127.0.0.1", "::1", "loopback", "WEBHOOKS_"):
        assert internal not in customer
