"""``GET /v1/health`` and ``/v1/health/live``: the probes of load balancers and orchestrators.
No key, no rate limit, no plain-HTTP refusal; readiness is 200 while Postgres answers and 503
in the error shape when it does not; liveness is 200 whatever the database does."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.support.api import bearer, new_key
from webhooks.api import create_app
from webhooks.settings import RateLimit, Settings

# Plain HTTP stays refused for keyed routes: a probe over plain HTTP must still get through.
STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "false"}
HEALTH = "/v1/health"
LIVE = "/v1/health/live"


def test_health_and_liveness_answer_ok_without_a_key_over_plain_http(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get(HEALTH)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok"}
        assert "x-ratelimit-limit" not in response.headers
        assert client.get(LIVE).json() == {"status": "ok"}
        # The keyed routes beside it are still refused over plain HTTP.
        assert client.get("/v1/events").status_code == 403


def test_health_is_not_counted_against_a_live_keys_rate_limit(
    engine: Engine, settings: Settings, project: str
) -> None:
    limited = replace(
        settings, api_rate_limit=RateLimit(2, timedelta(minutes=1)), api_allow_http=True
    )
    live = bearer(new_key(engine, settings, project))
    with TestClient(create_app(limited)) as client:
        for path in (HEALTH, LIVE):
            assert [client.get(path, headers=live).status_code for _ in range(3)] == [200] * 3
        first = client.get("/v1/events", headers=live)
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining"] == "1"


def test_health_is_503_when_the_database_does_not_answer_and_liveness_still_200(
    settings: Settings,
) -> None:
    down = replace(settings, database_url="postgresql://postgres@127.0.0.1:9/nowhere")
    with TestClient(create_app(down)) as client:
        response = client.get(HEALTH)
        live = client.get(LIVE)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server"
    assert "127.0.0.1" not in response.text
    assert live.status_code == 200 and live.json() == {"status": "ok"}


def test_both_probes_are_documented_as_needing_no_key(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        spec = client.get("/v1/openapi.json").json()
        assert client.get(HEALTH, params={"verbose": "1"}).status_code == 400
    for path in (HEALTH, LIVE):
        op = spec["paths"][path]["get"]
        assert op["security"] == [] and op["description"], path
        assert op["responses"]["200"]["content"]["application/json"]["schema"], path
    assert "503" in spec["paths"][HEALTH]["get"]["responses"]
