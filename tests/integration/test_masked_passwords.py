"""Passwords in the database and broker URLs never reach what operators read: the doctor's
report, the CLI's error line. Real services; URLs whose servers are down on purpose."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.support.cli import run_cli
from webhooks.cli.doctor import run_checks, verdict
from webhooks.settings import Settings

CLOSED_PORT = 1  # nothing listens on port 1 here: connections are refused at once
PASSWORDS = ("sentinelpw", "userpw", "querypw")

SENTINEL = (
    f"sentinel://:sentinelpw@127.0.0.1:{CLOSED_PORT}/0;"
    f"sentinel://:sentinelpw@127.0.0.1:{CLOSED_PORT + 1}/0"
)


def test_a_sentinel_broker_url_is_checked_and_reported_without_its_password(
    settings: Settings,
) -> None:
    checks = {c.name: c for c in run_checks(replace(settings, broker_url=SENTINEL))}

    broker = checks["broker"]
    # Checked (before: a ValueError from parsing "26379;sentinel:" as a port), and failed.
    assert not broker.ok
    assert broker.detail.startswith("cannot reach the broker at sentinel://:***@127.0.0.1:1/0;")
    assert "CELERY_BROKER_URL" in broker.detail
    assert checks["database"].ok
    assert not any(pw in verdict(list(checks.values()))[1] for pw in PASSWORDS)


@pytest.mark.parametrize(
    "broker_url",
    [
        f"redis://:userpw@127.0.0.1:{CLOSED_PORT}/0?password=querypw",
        f"amqp://guest:userpw@127.0.0.1:{CLOSED_PORT}//",
        SENTINEL,
    ],
)
def test_doctor_json_never_shows_a_password(env: dict[str, str], broker_url: str) -> None:
    database_url = env["DATABASE_URL"].replace("://postgres@", "://postgres:userpw@", 1)
    result = run_cli(
        {
            **env,
            "CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": database_url + "?password=querypw",
        },
        "doctor",
        "--json",
        "--timeout",
        "1s",
    )

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert not any(pw in result.stdout + result.stderr for pw in PASSWORDS), result.stdout
    assert [c["name"] for c in report["checks"]][:3] == ["database", "schema", "broker"]


def test_a_database_error_masks_a_password_given_as_a_query_parameter(
    env: dict[str, str],
) -> None:
    down = {
        **env,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/x?password=querypw",
    }

    result = run_cli(down, "endpoint", "list")

    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach Postgres at ")
    assert "password=***" in result.stderr
    assert "querypw" not in result.stderr
