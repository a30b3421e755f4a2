"""The HTTP API's routes through FastAPI's TestClient, against a real Postgres: scoping to a
key's project and mode, scopes, errors, pagination, idempotency, rate limits, networks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.support.api import bearer, new_key
from tests.support.deliveries import expand, new_endpoint, publish_expanded, publish_one
from webhooks.api import create_app
from webhooks.database import sql
from webhooks.settings import RateLimit, Settings

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true"}
URL = "http://127.0.0.1:9/hook"


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_openapi_documents_every_route_with_examples_and_errors(client: TestClient) -> None:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for route in [
        ("/v1/webhook_endpoints", "get"),
        ("/v1/webhook_endpoints", "post"),
        ("/v1/webhook_endpoints/{endpoint_id}", "patch"),
        ("/v1/webhook_endpoints/{endpoint_id}", "delete"),
        ("/v1/webhook_endpoints/{endpoint_id}/rotate_secret", "post"),
        ("/v1/webhook_endpoints/{endpoint_id}/test", "post"),
        ("/v1/webhook_endpoints/{endpoint_id}/recover", "post"),
        ("/v1/webhook_recoveries", "get"),
        ("/v1/webhook_recoveries/{recovery_id}/cancel", "post"),
        ("/v1/events", "get"),
        ("/v1/events/{event_id}", "get"),
        ("/v1/events/{event_id}/replay", "post"),
        ("/v1/events/simulate", "post"),
        ("/v1/webhook_deliveries/{delivery_id}", "get"),
        ("/v1/webhook_attempts", "get"),
        ("/v1/webhook_attempts/{attempt_id}", "get"),
        ("/v1/webhook_attempts/stream", "get"),
    ]:
        assert route in routes
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("description") or op.get("summary"), (path, method)
            if op.get("security") == []:
                continue  # needs no key (/v1/health): nothing to refuse or hide
            assert {"401", "404"} <= set(op["responses"]), (path, method)
    schemas = spec["components"]["schemas"]
    assert schemas["WebhookEndpoint"]["examples"] and schemas["WebhookAttempt"]["examples"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_a_request_without_a_usable_key_is_401_in_the_error_shape(client: TestClient) -> None:
    for headers in ({}, bearer("sk_live_unknown"), {"Authorization": "Basic abc"}):
        response = client.get("/v1/webhook_endpoints", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication"
        assert set(response.json()["error"]) == {"type", "message", "param"}


def test_an_endpoint_is_created_with_its_secret_once_and_read_without_it(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    key = new_key(engine, settings, project)
    created = client.post(
        "/v1/webhook_endpoints",
        json={"url": URL, "event_types": ["deployment.*"], "description": "deploys"},
        headers=bearer(key),
    )
    assert created.status_code == 201
    body = created.json()
    assert body["object"] == "webhook_endpoint" and body["secret"].startswith("whsec_")
    assert (body["project_id"], body["mode"], body["description"]) == (project, "live", "deploys")
    shown = client.get(f"/v1/webhook_endpoints/{body['id']}", headers=bearer(key)).json()
    assert "secret" not in shown and shown["id"] == body["id"]
    listed = client.get("/v1/webhook_endpoints", headers=bearer(key)).json()
    assert [e["id"] for e in listed["data"]] == [body["id"]]
    assert "secret" not in listed["data"][0]
    rotated = client.post(f"/v1/webhook_endpoints/{body['id']}/rotate_secret", headers=bearer(key))
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != body["secret"]


def test_a_key_sees_nothing_of_another_mode_or_project(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    live_endpoint, _ = new_endpoint(engine, settings, URL, project)
    live_event = publish_one(engine, settings, project)
    test_key = new_key(engine, settings, project, "test")
    other_key = new_key(engine, settings, project + "x", "live")
    for key in (test_key, other_key):
        for method, path in [
            ("GET", f"/v1/webhook_endpoints/{live_endpoint}"),
            ("PATCH", f"/v1/webhook_endpoints/{live_endpoint}"),
            ("DELETE", f"/v1/webhook_endpoints/{live_endpoint}"),
            ("POST", f"/v1/webhook_endpoints/{live_endpoint}/rotate_secret"),
            ("POST", f"/v1/webhook_endpoints/{live_endpoint}/test"),
            ("GET", f"/v1/events/{live_event}"),
            ("POST", f"/v1/events/{live_event}/replay"),
        ]:
            kwargs = {"json": {"description": "x"}} if method == "PATCH" else {}
            response = client.request(method, path, headers=bearer(key), **kwargs)
            assert response.status_code == 404, (key[:8], method, path, response.text)
            assert response.json()["error"]["type"] == "not_found"
        for path in ("/v1/webhook_endpoints", "/v1/events", "/v1/webhook_deliveries"):
            assert client.get(path, headers=bearer(key)).json()["data"] == []
    live_key = new_key(engine, settings, project, "live")
    assert (
        client.get(f"/v1/webhook_endpoints/{live_endpoint}", headers=bearer(live_key)).status_code
        == 200
    )


def test_a_read_key_reads_and_is_refused_writes_to_what_it_sees(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, URL, project)
    read = new_key(engine, settings, project, scope="read")
    assert (
        client.get(f"/v1/webhook_endpoints/{endpoint_id}", headers=bearer(read)).status_code == 200
    )
    patch = client.patch(
        f"/v1/webhook_endpoints/{endpoint_id}", json={"enabled": False}, headers=bearer(read)
    )
    assert patch.status_code == 403 and patch.json()["error"]["type"] == "permission"
    create = client.post("/v1/webhook_endpoints", json={"url": URL}, headers=bearer(read))
    assert create.status_code == 403
    unseen = client.patch(
        "/v1/webhook_endpoints/ep_nope", json={"enabled": False}, headers=bearer(read)
    )
    assert unseen.status_code == 404


def test_patch_and_delete_change_the_endpoint_and_a_deleted_one_cannot_be_changed(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, URL, project)
    key = new_key(engine, settings, project)
    path = f"/v1/webhook_endpoints/{endpoint_id}"
    disabled = client.patch(path, json={"enabled": False}, headers=bearer(key)).json()
    assert disabled["enabled"] is False and disabled["health"] == "disabled"
    changed = client.patch(
        path,
        json={"url": URL + "2", "event_types": ["project.*"], "enabled": True},
        headers=bearer(key),
    ).json()
    assert (changed["url"], changed["event_types"], changed["enabled"]) == (
        URL + "2",
        ["project.*"],
        True,
    )
    empty = client.patch(path, json={}, headers=bearer(key))
    assert empty.status_code == 400
    deleted = client.delete(path, headers=bearer(key))
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    gone = client.get(path, headers=bearer(key)).json()
    assert (gone["health"], gone["enabled"]) == ("deleted", False)
    assert client.patch(path, json={"description": "x"}, headers=bearer(key)).status_code == 404
    assert client.get("/v1/webhook_endpoints", headers=bearer(key)).json()["data"] == []


def test_bad_input_is_a_4xx_naming_the_parameter(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    key = bearer(new_key(engine, settings, project))
    for query, param in [
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("limt=5", "limt"),
        ("cursor=abc", "cursor"),
        ("created_after=yesterday", "created_after"),
    ]:
        response = client.get(f"/v1/events?{query}", headers=key)
        assert response.status_code == 400, query
        assert response.json()["error"] == {
            "type": "invalid_request",
            "message": response.json()["error"]["message"],
            "param": param,
        }
    unknown_field = client.post("/v1/webhook_endpoints", json={"url": URL, "urll": 1}, headers=key)
    assert unknown_field.status_code == 400 and unknown_field.json()["error"]["param"] == "urll"
    refused = client.post("/v1/webhook_endpoints", json={"url": "ftp://example.com"}, headers=key)
    assert refused.status_code == 422 and "https" in refused.json()["error"]["message"]
    not_json = client.post(
        "/v1/events", content=b"{", headers={**key, "content-type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["error"]["param"] == "body"


def test_pages_are_newest_first_and_stable_while_rows_are_inserted(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    key = bearer(new_key(engine, settings, project))
    new_endpoint(engine, settings, URL, project)
    events = [publish_one(engine, settings, project, data={"n": n}) for n in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/events?{query}", headers=key).json()
        seen += [e["id"] for e in page["data"]]
        assert page["has_more"] is (page["next_cursor"] is not None)
        publish_one(engine, settings, project, data={"late": True})
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(events))
    expand(engine, settings)  # what a dispatcher does after each commit
    deliveries = client.get("/v1/webhook_deliveries?limit=100", headers=key).json()["data"]
    assert len(deliveries) == 5 + 3


def test_a_cursor_is_refused_when_changed_or_shown_by_another_key(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    key = bearer(new_key(engine, settings, project))
    for _ in range(3):
        publish_one(engine, settings, project)
    cursor = client.get("/v1/events?limit=1", headers=key).json()["next_cursor"]
    assert client.get(f"/v1/events?limit=1&cursor={cursor}", headers=key).status_code == 200
    encoded, mac = cursor.split(".")
    forged = encoded[:-2] + ("AA" if encoded[-2:] != "AA" else "BB") + "." + mac
    other = bearer(new_key(engine, settings, project + "y"))
    for attempt, headers in [(forged, key), (cursor, other)]:
        response = client.get(f"/v1/events?limit=1&cursor={attempt}", headers=headers)
        assert response.status_code == 400 and response.json()["error"]["param"] == "cursor"
    assert client.get(f"/v1/webhook_endpoints?cursor={cursor}", headers=key).status_code == 400


def test_an_idempotency_key_gives_the_first_answer_and_refuses_another_request(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    headers = {**bearer(new_key(engine, settings, project)), "Idempotency-Key": "k-1"}
    body = {"type": "deployment.succeeded", "data": {"n": 1}}
    first = client.post("/v1/events", json=body, headers=headers)
    again = client.post("/v1/events", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    listed = client.get("/v1/events", headers=bearer(new_key(engine, settings, project)))
    assert [e["id"] for e in listed.json()["data"]] == [first.json()["id"]]
    other = client.post("/v1/events", json={**body, "data": {"n": 2}}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["type"] == "conflict"
    # Another project (or mode) has its own keys.
    elsewhere = {**bearer(new_key(engine, settings, project, "test")), "Idempotency-Key": "k-1"}
    assert client.post("/v1/events", json=body, headers=elsewhere).json()["mode"] == "test"


def test_a_secret_in_a_kept_answer_is_sealed_at_rest_and_given_back_whole(
    engine: Engine, settings: Settings, project: str
) -> None:
    sealed = replace(settings, secret_keys=(Fernet.generate_key().decode(),))
    headers = {**bearer(new_key(engine, settings, project)), "Idempotency-Key": "ep-1"}
    body = {"url": "https://hooks.example.com/in"}
    with TestClient(create_app(sealed)) as client:
        first = client.post("/v1/webhook_endpoints", json=body, headers=headers)
        again = client.post("/v1/webhook_endpoints", json=body, headers=headers)

    assert first.status_code == again.status_code == 201
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and again.json()["secret"] == secret
    with engine.connect() as conn:
        kept = conn.execute(
            sql(
                "SELECT response FROM {s}.api_idempotency "
                "WHERE project_id = :p AND idempotency_key = 'ep-1'",
                settings.db_schema,
            ),
            {"p": project},
        ).scalar_one()
    assert secret not in kept


def test_live_keys_are_rate_limited_with_headers_and_test_keys_are_not(
    engine: Engine, settings: Settings, project: str
) -> None:
    limited = replace(settings, api_rate_limit=RateLimit(3, timedelta(minutes=1)))
    live, test = (bearer(new_key(engine, settings, project, mode)) for mode in ("live", "test"))
    with TestClient(create_app(limited)) as client:
        answers = [client.get("/v1/events", headers=live) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert all(a.headers["x-ratelimit-limit"] == "3" for a in answers)
        assert int(answers[0].headers["x-ratelimit-reset"]) > 0
        assert 1 <= int(answers[3].headers["retry-after"]) <= 60
        assert answers[3].json()["error"]["type"] == "rate_limited"
        missing = client.get("/v1/events/evt_nope", headers=live)
        assert missing.status_code == 429 and "x-ratelimit-limit" in missing.headers
        for _ in range(5):
            answer = client.get("/v1/events", headers=test)
            assert answer.status_code == 200 and "x-ratelimit-limit" not in answer.headers


def test_every_answer_carries_the_guards_headers_whoever_gives_it(
    engine: Engine, settings: Settings, project: str
) -> None:
    # The guard adds them to the answer as it goes out: a route's error, the router's 404,
    # a validation 400 and the guard's own refusal must carry them like a success does.
    live = bearer(new_key(engine, settings, project))
    with TestClient(create_app(settings)) as client:
        answers = {
            "success": client.get("/v1/webhook_attempts", headers=live),
            "route's 404": client.get("/v1/events/evt_nope", headers=live),
            "no route": client.get("/v1/nowhere", headers=live),
            "validation 400": client.get("/v1/webhook_attempts?limit=0", headers=live),
            "guard's 401": client.get("/v1/events"),
            "public": client.get("/v1/openapi.json"),
        }
    assert [a.status_code for a in answers.values()] == [200, 404, 404, 400, 401, 200]
    for name, answer in answers.items():
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["cache-control"] == "no-store", name
        assert answer.headers.get_list("cache-control") == ["no-store"], name
    limit = str(settings.api_rate_limit.requests)
    for name in ("success", "route's 404", "no route", "validation 400"):
        assert answers[name].headers["x-ratelimit-limit"] == limit, name
    assert "x-ratelimit-limit" not in answers["guard's 401"].headers
    assert "x-ratelimit-limit" not in answers["public"].headers


def test_plain_http_is_refused_unless_allowed_or_from_a_trusted_proxy(
    engine: Engine, settings: Settings, project: str
) -> None:
    key = bearer(new_key(engine, settings, project))
    strict = replace(settings, api_allow_http=False)
    with TestClient(create_app(strict)) as client:
        refused = client.get("/v1/events", headers=key)
        assert refused.status_code == 403 and "https" in refused.json()["error"]["message"]
    with TestClient(create_app(strict), base_url="https://testserver") as client:
        assert client.get("/v1/events", headers=key).status_code == 200
    from webhooks.settings import parse_networks

    proxied = replace(strict, api_trusted_proxies=parse_networks("10.0.0.0/8"))
    with TestClient(create_app(proxied), client=("10.0.0.2", 5000)) as client:
        assert (
            client.get("/v1/events", headers={**key, "X-Forwarded-Proto": "https"}).status_code
            == 200
        )
        assert client.get("/v1/events", headers=key).status_code == 403


def test_a_key_works_only_from_its_networks(
    settings: Settings, engine: Engine, project: str
) -> None:
    key = bearer(new_key(engine, settings, project, allow_ip=("10.0.0.0/8",)))
    app = create_app(settings)
    with TestClient(app, client=("203.0.113.5", 5000)) as outside:
        refused = outside.get("/v1/events", headers=key)
        assert refused.status_code == 403 and "10.0.0.0/8" in refused.json()["error"]["message"]
    with TestClient(app, client=("10.1.2.3", 5000)) as inside:
        assert inside.get("/v1/events", headers=key).status_code == 200


def test_simulate_is_for_test_keys_and_publishes_a_test_event(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    live = bearer(new_key(engine, settings, project))
    refused = client.post(
        "/v1/events/simulate", json={"type": "deployment.succeeded"}, headers=live
    )
    assert refused.status_code == 403
    test = bearer(new_key(engine, settings, project, "test"))
    endpoint_id, _ = new_endpoint(engine, settings, URL, project, mode="test")
    simulated = client.post(
        "/v1/events/simulate", json={"type": "deployment.succeeded"}, headers=test
    )
    assert simulated.status_code == 202
    event = simulated.json()
    assert event["mode"] == "test" and event["data"]
    expand(engine, settings, event["id"])  # what a dispatcher does after the commit
    shown = client.get(f"/v1/events/{event['id']}", headers=test).json()
    assert [d["endpoint_id"] for d in shown["deliveries"]] == [endpoint_id]


def test_an_attempt_is_shown_in_full_as_data_without_internal_addresses(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, "https://hooks.example.com/x", project)
    event_id = publish_expanded(engine, settings, project)
    body = "<script>alert(1)</script>\x1b[31m"
    with engine.begin() as conn:
        delivery_id = conn.execute(
            sql("SELECT id FROM {s}.deliveries WHERE event_id = :e", settings.db_schema),
            {"e": event_id},
        ).scalar_one()
        for number, (kind, message, status) in enumerate(
            [
                (
                    "blocked",
                    "hooks.example.com resolves to 10.0.3.7, a private address; "
                    "WEBHOOKS_ALLOWED_NETWORKS",
                    None,
                ),
                (None, None, 200),
            ],
            start=1,
        ):
            conn.execute(
                sql(
                    "INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, project_id, "
                    "mode, "
                    "number, "
                    "trigger, started_at, duration_ms, request_url, request_headers, "
                    "response_status, response_headers, response_body, error_kind, "
                    "error_message) SELECT :d, :e, :ep, d.project_id, d.mode, "
                    ":n, 'scheduled', now(), 5, "
                    "'https://hooks.example.com/x', CAST(:rh AS jsonb), :status, "
                    "CAST(:sh AS jsonb), :body, :kind, :message "
                    "FROM {s}.deliveries d WHERE d.id = :d",
                    settings.db_schema,
                ),
                {
                    "d": delivery_id,
                    "e": event_id,
                    "ep": endpoint_id,
                    "n": number,
                    "rh": json.dumps({"webhook-id": event_id}),
                    "sh": json.dumps({"x-evil": "<b>"}),
                    "status": status,
                    "body": body,
                    "kind": kind,
                    "message": message,
                },
            )
    key = bearer(new_key(engine, settings, project))
    listed = client.get(f"/v1/webhook_attempts?event_id={event_id}", headers=key).json()["data"]
    assert [a["number"] for a in listed] == [2, 1]
    blocked = listed[1]
    assert "10.0.3.7" not in json.dumps(blocked) and "WEBHOOKS_" not in json.dumps(blocked)
    assert "not publicly routable" in blocked["error_message"]
    full = client.get(f"/v1/webhook_attempts/{blocked['id']}", headers=key)
    assert full.headers["content-type"] == "application/json"
    assert full.json()["response_body"] == body
    assert full.json()["response_headers"] == {"x-evil": "<b>"}
    assert full.json()["request_headers"] == {"webhook-id": event_id}
    assert (
        client.get("/v1/webhook_attempts?status=succeeded", headers=key).json()["data"][0]["number"]
        == 2
    )
    assert client.get("/v1/webhook_attempts/att_x", headers=key).status_code == 404
    other = bearer(new_key(engine, settings, project, "test"))
    assert client.get(f"/v1/webhook_attempts/{blocked['id']}", headers=other).status_code == 404
    delivery = client.get(f"/v1/webhook_deliveries/{delivery_id}", headers=key).json()
    assert delivery["object"] == "webhook_delivery" and delivery["event_id"] == event_id


def test_only_the_hash_of_a_key_is_stored(engine: Engine, settings: Settings, project: str) -> None:
    key = new_key(engine, settings, project)
    with engine.connect() as conn:
        row = conn.execute(
            sql("SELECT * FROM {s}.api_keys WHERE project_id = :p", settings.db_schema),
            {"p": project},
        ).one()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps([str(v) for v in row])


def test_recover_answers_202_with_a_recovery_to_poll_and_cancel(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, URL, project)
    key = bearer(new_key(engine, settings, project))
    recovery = client.post(
        f"/v1/webhook_endpoints/{endpoint_id}/recover",
        json={"since": "1h", "state": "all"},
        headers=key,
    )
    assert recovery.status_code == 202 and recovery.json()["object"] == "webhook_recovery"
    rec_id = recovery.json()["id"]
    assert client.get(f"/v1/webhook_recoveries/{rec_id}", headers=key).json()["id"] == rec_id
    assert [r["id"] for r in client.get("/v1/webhook_recoveries", headers=key).json()["data"]] == [
        rec_id
    ]
    cancelled = client.post(f"/v1/webhook_recoveries/{rec_id}/cancel", headers=key).json()
    assert cancelled["state"] in ("cancelled", "done")
    other = bearer(new_key(engine, settings, project, "test"))
    assert client.get(f"/v1/webhook_recoveries/{rec_id}", headers=other).status_code == 404
