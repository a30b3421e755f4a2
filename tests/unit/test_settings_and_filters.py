"""Settings parsing and event-type filters: pure functions."""

from __future__ import annotations

from datetime import timedelta

import pytest

import webhooks
from webhooks.errors import ConfigurationError, InvalidEventType
from webhooks.event_types import matches, validate_filters
from webhooks.outbox import channel
from webhooks.settings import Settings, parse_duration


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.timeout == timedelta(seconds=10)
    assert settings.retry_schedule == tuple(
        timedelta(seconds=s) for s in (60, 300, 1800, 7200, 21600, 43200)
    )
    assert settings.retry_window == timedelta(hours=72)
    assert settings.retry_jitter == 0.1
    assert settings.timeout < settings.lease <= timedelta(seconds=60)
    assert settings.db_schema == "webhooks"
    assert settings.allowed_networks == ()
    assert settings.allow_http is False


def test_short_schedules_drive_the_tests() -> None:
    settings = Settings.from_env({"WEBHOOKS_RETRY_SCHEDULE": "1s,2s,4s"})
    assert settings.retry_schedule == (
        timedelta(seconds=1),
        timedelta(seconds=2),
        timedelta(seconds=4),
    )


def test_a_plain_postgresql_url_is_accepted() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://u@db:5432/app"})
    assert settings.database_url == "postgresql+psycopg://u@db:5432/app"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("WEBHOOKS_TIMEOUT", "ten", "not a duration"),
        ("WEBHOOKS_RETRY_SCHEDULE", "1m,,x", "not a duration"),
        ("WEBHOOKS_RETRY_JITTER", "2", "between 0 and 1"),
        ("WEBHOOKS_LEASE", "5s", "longer than WEBHOOKS_TIMEOUT"),
        ("WEBHOOKS_ALLOWED_NETWORKS", "10.0.0.0/33", "not a CIDR"),
        ("WEBHOOKS_ALLOW_HTTP", "maybe", "not a boolean"),
        ("WEBHOOKS_DB_SCHEMA", "x; drop table", "not a valid schema name"),
    ],
)
def test_invalid_settings_say_which_and_why(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)


@pytest.mark.parametrize("length", [60, 63])
def test_a_schema_name_whose_notify_channel_is_over_63_bytes_is_refused(length: int) -> None:
    longest = Settings.from_env({"WEBHOOKS_DB_SCHEMA": "s" * 59})
    assert len(channel(longest).encode()) == 63
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"WEBHOOKS_DB_SCHEMA": "s" * length})
    message = str(info.value)
    assert "WEBHOOKS_DB_SCHEMA" in message and "NOTIFY channel" in message
    assert "at most 59 characters" in message
    assert "\n" not in message


def test_a_schema_name_postgres_reserves_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="reserves"):
        Settings.from_env({"WEBHOOKS_DB_SCHEMA": "pg_webhooks"})


def test_durations_take_s_m_h_suffixes() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("5m") == timedelta(minutes=5)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1.5") == timedelta(seconds=1.5)


@pytest.mark.parametrize(
    ("filters", "event_type", "expected"),
    [
        ((), "anything.at_all", True),
        (("deployment.succeeded",), "deployment.succeeded", True),
        (("deployment.succeeded",), "deployment.failed", False),
        (("deployment.*",), "deployment.build.failed", True),
        (("deployment.*",), "deployments.created", False),
        (("deployment.*",), "deployment", False),
        (("project.created", "deployment.*"), "project.created", True),
    ],
)
def test_filters_match_exact_types_and_prefixes(
    filters: tuple[str, ...], event_type: str, expected: bool
) -> None:
    assert matches(filters, event_type) is expected


def test_malformed_filters_are_refused() -> None:
    assert validate_filters(["deployment.*", " a.b ", "a.b", ""]) == ("deployment.*", "a.b")
    for bad in ("deployment.", "*", "a b", "a..b"):
        with pytest.raises(InvalidEventType):
            validate_filters([bad])


def test_the_public_api_is_pinned() -> None:
    assert webhooks.__all__ == sorted(webhooks.__all__)
    assert set(webhooks.__all__) == {
        "ConfigurationError",
        "DatabaseUnavailable",
        "EndpointDeleted",
        "EndpointNotFound",
        "EventNotFound",
        "InvalidArgument",
        "InvalidEndpointURL",
        "InvalidEventType",
        "InvalidPayload",
        "PayloadTooLarge",
        "Settings",
        "WebhookError",
        "__version__",
        "publish",
    }
    assert issubclass(webhooks.PayloadTooLarge, ValueError)
    assert issubclass(webhooks.PayloadTooLarge, webhooks.WebhookError)


def test_current_settings_are_read_once_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOKS_TIMEOUT", "7s")
    first = Settings.current()
    assert Settings.current() is first  # not read and validated again on every call
    assert first.timeout == timedelta(seconds=7)
    monkeypatch.setenv("WEBHOOKS_TIMEOUT", "8s")
    changed = Settings.current()
    assert changed is not first and changed.timeout == timedelta(seconds=8)
