"""JSON logs: one object per line, the ids callers pass, nothing else of theirs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from webhooks.json_logs import JsonFormatter


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("webhooks.worker"), logging.getLogger("celery.worker")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    yield loggers[0], stream
    for logger in loggers:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_the_event_name_and_ids(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info(
        "attempt.recorded",
        extra={"delivery_id": "dlv_1", "event_id": "evt_1", "attempt": 3, "status": None},
    )
    [record] = lines(stream)
    assert record.pop("ts").endswith("Z")  # type: ignore[union-attr]
    assert record == {
        "level": "info",
        "logger": "webhooks.worker",
        "event": "attempt.recorded",
        "delivery_id": "dlv_1",
        "event_id": "evt_1",
        "attempt": 3,
        "status": None,
    }
    assert stream.getvalue().count("\n") == 1


def test_multiline_messages_and_exceptions_stay_on_one_line(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("dispatcher.crashed", extra={"level": "shadowed", "when": object()})
    assert stream.getvalue().count("\n") == 1
    [record] = lines(stream)
    assert record["level"] == "error" and record["level_"] == "shadowed"
    assert "ValueError: boom\nsecond line" in str(record["exception"])
    assert str(record["when"]).startswith("<object object")


def test_other_libraries_extras_are_left_out(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    _, stream = capture
    logging.getLogger("celery.worker").info(
        "Task %s received", "webhooks.deliver", extra={"data": {"args": ["payload?"]}}
    )
    [record] = lines(stream)
    assert record["event"] == "Task webhooks.deliver received"
    assert "data" not in record
