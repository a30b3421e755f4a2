"""Prometheus metrics served by a real worker and a real dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.settings import Settings

STACK_ENV = {"WEBHOOKS_RETRY_SCHEDULE": "1s", "WEBHOOKS_RETRY_WINDOW": "1s"}


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def ports(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, int]]:
    worker_port, dispatcher_port = free_port(), free_port()
    stack = Stack(env=env, logdir=tmp_path)
    try:
        stack.start_worker(extra_env={"WEBHOOKS_METRICS_PORT": str(worker_port)})
        stack.start_dispatcher(extra_env={"WEBHOOKS_METRICS_PORT": str(dispatcher_port)})
        yield worker_port, dispatcher_port
    finally:
        stack.stop()


def test_workers_count_attempts_by_outcome_and_dispatchers_report_backlog_and_claims(
    ports: tuple[int, int],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    worker_port, dispatcher_port = ports
    receiver.script(path + "/bad", [500])
    new_endpoint(engine, settings, receiver.url(path), project, ("good.event",))
    new_endpoint(engine, settings, receiver.url(path + "/bad"), project, ("bad.event",))
    wait_for_state(
        engine, settings, publish_one(engine, settings, project, "good.event"), "succeeded"
    )
    wait_for_state(engine, settings, publish_one(engine, settings, project, "bad.event"), "failed")

    worker = samples(worker_port)
    ok = (
        ("error_kind", "none"),
        ("mode", "live"),
        ("outcome", "succeeded"),
        ("trigger", "scheduled"),
    )
    bad = (
        ("error_kind", "http_status"),
        ("mode", "live"),
        ("outcome", "failed"),
        ("trigger", "scheduled"),
    )
    assert worker[("webhooks_attempts_total", ok)] == 1
    assert worker[("webhooks_attempts_total", bad)] == 1
    assert worker[("webhooks_attempt_duration_seconds_count", (("outcome", "succeeded"),))] == 1

    def dispatcher_reports() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        found = samples(dispatcher_port)
        return found if ("webhooks_backlog_due", ()) in found else None

    dispatcher = wait_for(dispatcher_reports, what="the dispatcher's gauges")
    assert dispatcher[("webhooks_claimed_total", ())] >= 2
    assert dispatcher[("webhooks_backlog_due", ())] >= 0
    assert ("webhooks_breakers_open", ()) in dispatcher
    assert ("webhooks_leases_expired_total", ()) in dispatcher


def test_json_log_format_gives_one_json_object_per_line_with_ids(
    env: dict[str, str],
    tmp_path: Path,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    import json

    stack = Stack(env={**env, "WEBHOOKS_LOG_FORMAT": "json"}, logdir=tmp_path)
    try:
        worker = stack.start_worker()
        dispatcher = stack.start_dispatcher()
        new_endpoint(engine, settings, receiver.url(path), project, ("good.event",))
        event_id = publish_one(engine, settings, project, "good.event")
        wait_for_state(engine, settings, event_id, "succeeded")
        wait_for(lambda: "attempt.recorded" in worker.output(), what="the worker's log line")
    finally:
        stack.stop()
    lines = [json.loads(line) for line in dispatcher.output().splitlines() if line.strip()]
    assert {"dispatcher.started", "dispatcher.stopped"} <= {line["event"] for line in lines}
    recorded = [
        json.loads(line)
        for line in worker.output().splitlines()
        if line.startswith("{") and "attempt.recorded" in line
    ]
    assert recorded[0]["event_id"] == event_id
    assert recorded[0]["status"] == 200
    assert {"ts", "level", "logger", "delivery_id", "endpoint_id", "attempt"} <= set(recorded[0])
