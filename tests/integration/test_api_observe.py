"""The API process's own metrics and request log, from a real `webhooks api` under uvicorn:
``/metrics`` on `WEBHOOKS_METRICS_PORT` with requests counted by route template, method and
status and timed by route; one JSON ``api.request`` line per request with the route, status,
duration and key id, and never the key or the Authorization header."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from tests.support.api import bearer, served_api
from tests.support.polling import wait_for
from tests.support.ports import free_port
from webhooks.api import create_app
from webhooks.keys import create_key
from webhooks.settings import Settings

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true"}


def scrape(port: int) -> str | None:
    """The metrics text, once it shows the API's requests."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    if response.status_code == 200 and "webhooks_api_requests_total{" in response.text:
        return response.text
    return None


def samples(text: str, name: str) -> list[dict[str, str]]:
    """The labels (with the value as ``_value``) of every sample called ``name``."""
    return [
        {**sample.labels, "_value": str(sample.value)}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_the_api_process_serves_its_metrics_and_logs_a_line_per_request_without_keys(
    env: dict[str, str], engine: Engine, settings: Settings, project: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        record, key = create_key(conn, settings.db_schema, project_id=project, mode="live")
    metrics_port = free_port()
    served_env = {**env, "WEBHOOKS_METRICS_PORT": str(metrics_port), "WEBHOOKS_LOG_FORMAT": "json"}
    with served_api(served_env, tmp_path) as base:
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/v1/webhook_endpoints", headers=bearer(key)).status_code == 200
            for _ in range(2):
                missing = client.get("/v1/events/evt_secretlooking123", headers=bearer(key))
                assert missing.status_code == 404
            assert client.get("/v1/events/evt_nokey").status_code == 401
            assert client.get("/v1/no/such/route", headers=bearer(key)).status_code == 404
            assert client.get("/v1/health").status_code == 200
        text = wait_for(
            lambda: scrape(metrics_port), timeout=10, what="the API's /metrics on its own port"
        )
        log = (tmp_path / "api.log").read_text()
    counted = {
        (s["route"], s["method"], s["status"]): float(s["_value"])
        for s in samples(text, "webhooks_api_requests_total")
    }
    assert counted[("/v1/webhook_endpoints", "GET", "200")] == 1
    assert counted[("/v1/events/{event_id}", "GET", "404")] == 2
    assert counted[("/v1/events/{event_id}", "GET", "401")] == 1  # refused before routing
    assert counted[("unmatched", "GET", "404")] == 1
    assert counted[("/v1/health", "GET", "200")] >= 1
    timed = samples(text, "webhooks_api_request_duration_seconds_count")
    assert {"route": "/v1/events/{event_id}", "_value": "3.0"} in timed
    # Path templates only: no id ever becomes a label.
    assert "evt_" not in text and "/v1/no/such" not in text
    # One JSON line per request, with the key's id and never the key.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "api.request"]
    assert len(requests) >= 6, log[-2000:]
    first = next(line for line in requests if line["route"] == "/v1/webhook_endpoints")
    assert (first["method"], first["status"], first["key_id"]) == ("GET", 200, record.id)
    assert isinstance(first["duration_ms"], int | float) and first["duration_ms"] >= 0
    refused = [line for line in requests if line["status"] == 401]
    assert refused and all(line["key_id"] is None for line in refused)
    assert key not in log and key[8:] not in log
    assert "Bearer" not in log and "authorization" not in log.lower()
    assert "evt_secretlooking123" not in log


def test_the_api_serves_no_metrics_on_its_own_port(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/metrics")
    assert response.status_code in (401, 404) and "webhooks_api" not in response.text
