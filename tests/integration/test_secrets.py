"""Secrets: rotation keeps receivers verifying; a secret never shows up where it must not."""

from __future__ import annotations

import json

import pytest
import standardwebhooks
import svix.webhooks
from sqlalchemy.engine import Engine

from tests.support.cli import cli_ok
from tests.support.deliveries import publish_one, wait_for_state
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.settings import Settings

pytestmark = pytest.mark.usefixtures("stack")


cli = cli_ok


def as_text(output: object) -> str:
    return output if isinstance(output, str) else json.dumps(output)


def test_rotated_endpoint_signs_with_old_and_new_secret_and_both_libraries_verify(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    added = cli(env, "endpoint", "add", receiver.url(path), "--project", project, "--json")
    rotated = cli(env, "endpoint", "rotate-secret", added["id"], "--json")
    event_id = publish_one(engine, settings, project)
    wait_for_state(engine, settings, event_id, "succeeded")

    [request] = receiver.received(path)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (added["secret"], rotated["secret"]):
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        svix.webhooks.Webhook(secret).verify(request.body, request.headers)


def test_after_the_grace_period_only_the_new_secret_signs(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    added = cli(env, "endpoint", "add", receiver.url(path), "--project", project, "--json")
    rotated = cli(env, "endpoint", "rotate-secret", added["id"], "--grace", "0s", "--json")
    event_id = publish_one(engine, settings, project)
    wait_for_state(engine, settings, event_id, "succeeded")
    [request] = receiver.received(path)
    standardwebhooks.Webhook(rotated["secret"]).verify(request.body, request.headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(added["secret"]).verify(request.body, request.headers)


def test_no_secret_in_any_log_line_or_cli_output_of_a_full_run(
    env: dict[str, str],
    stack: Stack,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    receiver.script(path, [500, 200])
    added = cli(env, "endpoint", "add", receiver.url(path), "--project", project, "--json")
    secrets = [added["secret"]]
    secrets.append((cli(env, "endpoint", "rotate-secret", added["id"], "--json"))["secret"])
    event_id = publish_one(engine, settings, project)
    wait_for_state(engine, settings, event_id, "succeeded")
    cli(env, "replay", event_id)
    outputs = [
        cli(env, "endpoint", "show", added["id"]),
        cli(env, "endpoint", "show", added["id"], "--json"),
        cli(env, "endpoint", "list", "--json"),
        cli(env, "endpoint", "list"),
        cli(env, "event", "show", event_id),
        cli(env, "event", "show", event_id, "--json"),
        cli(env, "attempts", event_id, "--json"),
        cli(env, "endpoint", "disable", added["id"], "--json"),
        cli(env, "endpoint", "enable", added["id"]),
        stack.logs(tail=None),
    ]
    assert "attempt.recorded" in as_text(outputs[-1])  # the logs really were read
    for secret in secrets:
        key_part = secret.removeprefix("whsec_")
        for output in outputs:
            assert key_part not in as_text(output)
