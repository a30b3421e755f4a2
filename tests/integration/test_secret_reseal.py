"""Secrets at rest over a key's life: plain text is never silent, `webhooks secrets reseal`
seals old rows and moves every secret to a new key so the old one can be removed, and
secrets past their rotation grace are dropped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import standardwebhooks
from cryptography.fernet import Fernet
from sqlalchemy.engine import Engine

from tests.support.cli import cli_ok, run_cli
from tests.support.deliveries import new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks import clock
from webhooks.cli.doctor import run_checks
from webhooks.endpoints import rotate_secret
from webhooks.errors import ConfigurationError
from webhooks.sealing import PREFIX, unseal
from webhooks.settings import Settings
from workers.app import app as celery_app
from workers.dispatcher import Dispatcher

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
PLAINTEXT_WARNING = "WEBHOOKS_SECRET_KEY is not set"


def stored(engine: Engine, settings: Settings, endpoint_id: str) -> list[dict[str, str]]:
    with engine.connect() as conn:
        value = conn.execute(
            sa.text(f'SELECT secrets FROM "{settings.db_schema}".endpoints WHERE id = :id'),
            {"id": endpoint_id},
        ).scalar_one()
    return list(value)


def with_key(env: dict[str, str], key: str) -> dict[str, str]:
    return {**env, "WEBHOOKS_SECRET_KEY": key}


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.stop()
        print(stack.logs())


def secrets_check(settings: Settings) -> tuple[bool, bool, str]:
    [check] = [c for c in run_checks(settings) if c.name == "secrets"]
    return check.ok, check.is_warning, check.detail


def test_reseal_moves_every_secret_to_the_new_key_so_the_old_one_can_be_removed(
    env: dict[str, str],
    engine: Engine,
    receiver: Receiver,
    project: str,
    path: str,
    stacks: list[Stack],
    tmp_path: Path,
) -> None:
    plain = Settings.from_env(env)
    under_a = Settings.from_env(with_key(env, KEY_A))
    # Stored before any key was set, in plain text.
    plain_id, plain_secret = new_endpoint(engine, plain, receiver.url(path), project)
    # Sealed under A, then rotated with no grace: its first secret is retired at once.
    rotated_id, _ = new_endpoint(engine, under_a, receiver.url(path + "r"), project + "r")
    with engine.begin() as conn:
        _, rotated_secret = rotate_secret(conn, under_a, rotated_id, grace=timedelta(0))
    assert len(stored(engine, under_a, rotated_id)) == 2
    assert secrets_check(under_a)[1], "plain-text rows are worth a warning"

    report = cli_ok(with_key(env, KEY_A), "secrets", "reseal", "--json")
    assert report["resealed"] >= 2 and report["dropped"] >= 1
    [item] = stored(engine, under_a, plain_id)
    assert item["secret"].startswith(PREFIX) and unseal(item["secret"], (KEY_A,)) == plain_secret
    [item] = stored(engine, under_a, rotated_id)
    assert unseal(item["secret"], (KEY_A,)) == rotated_secret
    assert secrets_check(under_a)[:2] == (True, False)

    # B goes first, A stays listed to read what A sealed; reseal moves everything to B.
    with pytest.raises(ConfigurationError):
        unseal(item["secret"], (KEY_B,))
    cli_ok(with_key(env, f"{KEY_B},{KEY_A}"), "secrets", "reseal")
    for endpoint_id in (plain_id, rotated_id):
        for item in stored(engine, under_a, endpoint_id):
            unseal(item["secret"], (KEY_B,))  # raises if A were still needed

    # A removed: processes that know only B sign with the right secrets.
    stack = Stack(env=with_key(env, KEY_B), logdir=tmp_path)
    stacks.append(stack)
    stack.start_worker()
    stack.start_dispatcher()
    for endpoint_path, endpoint_project, secret in (
        (path, project, plain_secret),
        (path + "r", project + "r", rotated_secret),
    ):
        event_id = publish_one(engine, under_a, endpoint_project)
        wait_for_state(engine, under_a, event_id, "succeeded")
        [request] = receiver.received(endpoint_path)
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def test_reseal_without_a_key_refuses_and_says_how_to_make_one(env: dict[str, str]) -> None:
    result = run_cli(env, "secrets", "reseal")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "WEBHOOKS_SECRET_KEY is not set" in line and "generate_key" in line


def test_reseal_names_the_endpoint_whose_key_is_missing(
    env: dict[str, str], engine: Engine, receiver: Receiver, project: str, path: str
) -> None:
    endpoint_id, _ = new_endpoint(
        engine, Settings.from_env(with_key(env, KEY_A)), receiver.url(path), project
    )
    result = run_cli(with_key(env, KEY_B), "secrets", "reseal")
    assert result.returncode == 1
    assert endpoint_id in result.stderr and "list the key" in result.stderr
    cli_ok(with_key(env, f"{KEY_B},{KEY_A}"), "secrets", "reseal")  # leaves the rest healthy


def test_dispatchers_drop_secrets_whose_grace_period_is_over(
    env: dict[str, str], engine: Engine, receiver: Receiver, project: str, path: str
) -> None:
    settings = Settings.from_env(env)
    endpoint_id, current = new_endpoint(engine, settings, receiver.url(path), project)
    now = clock.now()
    secrets = [
        {"secret": current, "expires_at": None},
        {"secret": "whsec_in_grace", "expires_at": (now + timedelta(hours=1)).isoformat()},
        {"secret": "whsec_retired", "expires_at": (now - timedelta(seconds=1)).isoformat()},
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'UPDATE "{settings.db_schema}".endpoints SET secrets = CAST(:s AS jsonb) '
                "WHERE id = :id"
            ),
            {"s": json.dumps(secrets), "id": endpoint_id},
        )

    dispatcher = Dispatcher(settings, celery_app)
    try:
        dispatcher.heartbeat()
    finally:
        dispatcher.engine.dispose()
    assert stored(engine, settings, endpoint_id) == secrets[:2]


def test_plain_text_is_warned_about_by_every_process_outside_dev(
    env: dict[str, str], receiver: Receiver, project: str, stacks: list[Stack], tmp_path: Path
) -> None:
    added = run_cli(env, "endpoint", "add", receiver.url("/w"), "--project", project, "--json")
    assert added.returncode == 0 and PLAINTEXT_WARNING in added.stderr
    endpoint_id = json.loads(added.stdout)["id"]
    rotated = run_cli(env, "endpoint", "rotate-secret", endpoint_id)
    assert rotated.returncode == 0 and PLAINTEXT_WARNING in rotated.stderr
    for quiet in ({"WEBHOOKS_DEV": "true"}, {"WEBHOOKS_SECRET_KEY": KEY_A}):
        result = run_cli(
            {**env, **quiet}, "endpoint", "add", receiver.url("/w"), "--project", project
        )
        assert result.returncode == 0 and PLAINTEXT_WARNING not in result.stderr

    ok, is_warning, detail = secrets_check(Settings.from_env(env))
    assert ok and is_warning and "plain text" in detail
    assert not secrets_check(Settings.from_env({**env, "WEBHOOKS_DEV": "true"}))[1]

    stack = Stack(env=env, logdir=tmp_path)
    stacks.append(stack)
    worker, dispatcher = stack.start_worker(concurrency=1), stack.start_dispatcher()
    for process in (worker, dispatcher):
        wait_for(
            lambda p=process: "secrets.stored_in_plain_text" in p.output(),  # type: ignore[misc]
            timeout=10,
            what=f"{process.name} to warn about plain-text secrets",
        )
