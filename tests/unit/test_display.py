"""What may be shown: passwords masked wherever a URL or a setting is printed, control
characters escaped wherever a receiver's text is."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest

from webhooks.display import (
    escape_controls,
    escape_controls_in_json,
    mask_basic_auth,
    mask_url,
    mask_urls_in,
)
from webhooks.json_logs import JsonFormatter
from webhooks.logs import TEXT_FORMAT, KeyValueFormatter
from webhooks.messages import Claim
from webhooks.recording import AttemptJob
from webhooks.settings import Settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://user:pw@rabbit:5672//", "amqp://user:***@rabbit:5672//"),
        ("postgresql://u:p@ss/w?rd@db/x", "postgresql://u:***@db/x"),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=***&db=1"),
        (
            "postgresql://u@db/x?sslmode=require&sslpassword=pw",
            "postgresql://u@db/x?sslmode=require&sslpassword=***",
        ),
        (
            "sentinel://:pw@host1:26379;sentinel://:pw@host2:26379",
            "sentinel://:***@host1:26379;sentinel://:***@host2:26379",
        ),
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("redis://h:6379;sentinel", "redis://h:6379;sentinel"),
        ("not a url at all", "not a url at all"),
    ],
)
def test_passwords_in_urls_are_masked_and_the_rest_kept(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_urls_quoted_in_a_message_are_masked() -> None:
    text = "Error connecting to redis://:pw@h:6379/0 (tried amqp://u:pw@r//?token=t)."
    assert mask_urls_in(text) == (
        "Error connecting to redis://:***@h:6379/0 (tried amqp://u:***@r//?token=***)."
    )


SECRETS = ("dbpw", "brokerpw", "querypw", "flowerpw", "whsec_plain", "fernetkey")


def test_settings_repr_masks_passwords_basic_auth_and_keys() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://u:dbpw@db/x?password=querypw",
        broker_url="redis://:brokerpw@redis:6379/0",
        flower_basic_auth="admin:flowerpw",
        secret_keys=("fernetkey",),
    )

    shown = repr(settings)

    assert not any(secret in shown for secret in SECRETS), shown
    assert "u:***@db" in shown and "redis://:***@redis" in shown and "admin:***" in shown
    assert "timeout=datetime.timedelta(seconds=10)" in shown  # the rest as before
    assert mask_basic_auth("a:pw1,b:pw2") == "a:***,b:***"


def test_attempt_job_repr_shows_no_secret_and_no_payload() -> None:
    claim = Claim("dlv_1", "evt_1", "ep_1", 1, "token", "scheduled")
    job = AttemptJob(
        claim, "proj_1", "live", b'{"secret-ish": 1}', "https://e.com/h", ("whsec_plain",)
    )

    shown = repr(job)

    assert "whsec_plain" not in shown and "secret-ish" not in shown
    assert "dlv_1" in shown and "<17 bytes>" in shown and "<1 masked>" in shown


@pytest.mark.parametrize("formatter", [KeyValueFormatter(TEXT_FORMAT), JsonFormatter()])
def test_log_lines_mask_the_urls_they_quote(formatter: logging.Formatter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    loggers = [logging.getLogger("webhooks.test_display"), logging.getLogger("kombu.test")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        loggers[0].warning(
            "dispatcher.broker_error",
            extra={"error": 'cannot reach redis://:brokerpw@h/0 "quoted"'},
        )
        loggers[1].error("Cannot connect to amqp://u:brokerpw@h//?password=querypw")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.propagate = True

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert not any(secret in stream.getvalue() for secret in SECRETS), lines
    if isinstance(formatter, JsonFormatter):
        assert json.loads(lines[0])["error"] == 'cannot reach redis://:***@h/0 "quoted"'


def test_control_characters_become_visible_escapes() -> None:
    assert (
        escape_controls("a\x1b[31mb\x9bc\x07\r\n\t\x7fé✓")
        == "a\\x1b[31mb\\x9bc\\x07\\r\\n\\t\\x7fé✓"
    )


def test_json_text_gets_c1_escapes_and_reads_back_the_same() -> None:
    value = {"body": "\x1b[2J\x9b31m\x7f\x85ok é"}
    text = escape_controls_in_json(json.dumps(value, ensure_ascii=False))

    assert not any(c in text for c in "\x1b\x9b\x7f\x85")
    assert "\\u009b" in text and "é" in text
    assert json.loads(text) == value


def test_a_settings_field_declared_secret_is_masked_whatever_it_holds() -> None:
    shown = repr(Settings(timeout=timedelta(seconds=3)))
    assert shown.startswith("Settings(database_url='postgresql+psycopg://postgres@127.0.0.1")
    assert "secret_keys='***'" in shown
