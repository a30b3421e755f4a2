"""Isolation, proved route by route: a key sees only its own project and mode.

The walk is driven by the generated OpenAPI document, so a route added tomorrow is walked
too (or fails the test until it says which id it takes). Objects are made by a live key of
one project; a live key of another project and a test key of the same project then call
every route on them: each route on an object answers 404, each list an empty page (even
filtered by the other world's ids), nothing answers 5xx, and the owner still sees everything
afterwards, unchanged. The attempt stream is checked on its own (it never ends), through the
filter the route subscribes with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.support.api import bearer, new_key
from tests.support.deliveries import expand
from webhooks.api import create_app
from webhooks.api._tail import StreamFilter
from webhooks.database import sql
from webhooks.feed import read_attempts
from webhooks.settings import Settings

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true"}
URL = "http://127.0.0.1:9/hook"
STREAM = "/v1/webhook_attempts/stream"
# Routes that need no key: nothing in them belongs to a project.
KEYLESS = {"/v1/openapi.json", "/v1/health", "/v1/health/live"}


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _insert_attempt(engine: Engine, settings: Settings, event_id: str, endpoint_id: str) -> str:
    """Record one attempt of the event's delivery, as a worker would (after the dispatcher's
    expansion); return the delivery id."""
    expand(engine, settings, event_id)
    with engine.begin() as conn:
        delivery_id = str(
            conn.execute(
                sql("SELECT id FROM {s}.deliveries WHERE event_id = :e", settings.db_schema),
                {"e": event_id},
            ).scalar_one()
        )
        conn.execute(
            sql(
                "INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, project_id, mode, "
                "number, trigger, "
                "started_at, duration_ms, request_url, request_headers, response_status, "
                "response_headers, response_body, error_kind, error_message) "
                "SELECT :d, :e, :ep, d.project_id, d.mode, "
                "1, 'scheduled', now(), 5, :url, CAST(:rh AS jsonb), 500, "
                "CAST(:rh AS jsonb), 'no', NULL, NULL "
                "FROM {s}.deliveries d WHERE d.id = :d",
                settings.db_schema,
            ),
            {"d": delivery_id, "e": event_id, "ep": endpoint_id, "url": URL, "rh": "{}"},
        )
    return delivery_id


def _owned_objects(
    client: TestClient, engine: Engine, settings: Settings, owner: dict[str, str]
) -> dict[str, str]:
    """One object of every kind in the owner's world, by the name of the parameter that
    carries its id (in paths and in list filters)."""
    endpoint = client.post("/v1/webhook_endpoints", json={"url": URL}, headers=owner)
    assert endpoint.status_code == 201, endpoint.text
    endpoint_id = endpoint.json()["id"]
    event = client.post(
        "/v1/events", json={"type": "deployment.succeeded", "data": {"n": 1}}, headers=owner
    )
    assert event.status_code == 201, event.text
    event_id = event.json()["id"]
    delivery_id = _insert_attempt(engine, settings, event_id, endpoint_id)
    attempts = client.get(f"/v1/webhook_attempts?event_id={event_id}", headers=owner).json()
    recovery = client.post(
        f"/v1/webhook_endpoints/{endpoint_id}/recover", json={"since": "1h"}, headers=owner
    )
    assert recovery.status_code == 202, recovery.text
    session = client.post("/v1/webhook_portal_sessions", headers=owner)
    assert session.status_code == 201, session.text
    return {
        "endpoint_id": endpoint_id,
        "event_id": event_id,
        "delivery_id": delivery_id,
        "attempt_id": attempts["data"][0]["id"],
        "recovery_id": recovery.json()["id"],
        "session_id": session.json()["id"],
    }


def _operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) of every route the API documents."""
    spec = client.get("/v1/openapi.json").json()
    found = [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if path not in KEYLESS
    ]
    for _, _, op in found:
        op["_schemas"] = spec["components"]["schemas"]
    return found


def _body(op: dict[str, Any]) -> Any:
    """The documented example of the operation's JSON body (or None when it takes none)."""
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    schema = content["schema"]
    refs = [schema, *schema.get("anyOf", [])]
    for ref in refs:
        if "$ref" in ref:
            name = ref["$ref"].rsplit("/", 1)[-1]
            return op["_schemas"][name]["examples"][0]
    return {}


def _call(
    client: TestClient,
    method: str,
    template: str,
    op: dict[str, Any],
    ids: dict[str, str],
    headers: dict[str, str],
) -> tuple[str, Any]:
    params = op.get("parameters", [])
    in_path = [p["name"] for p in params if p["in"] == "path"]
    unknown = [name for name in in_path if name not in ids]
    assert not unknown, f"{method} {template}: the walk makes no object for {unknown}"
    path = template.format(**{name: ids[name] for name in in_path})
    query = {p["name"]: ids[p["name"]] for p in params if p["in"] == "query" and p["name"] in ids}
    body = _body(op)
    if body is not None and "endpoint_id" in body:
        body = {**body, "endpoint_id": ids["endpoint_id"]}
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    response = client.request(method, path, params=query, headers=headers, **kwargs)
    return f"{method} {path}?{query}", response


def test_every_route_hides_another_project_and_the_other_mode(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    owner = bearer(new_key(engine, settings, project, "live"))
    ids = _owned_objects(client, engine, settings, owner)
    strangers = {
        "another project": bearer(new_key(engine, settings, project + "-other", "live")),
        "the other mode": bearer(new_key(engine, settings, project, "test")),
    }
    operations = [op for op in _operations(client) if op[1] != STREAM]
    walked = {"object": 0, "list": 0, "create": 0}
    for who, headers in strangers.items():
        for method, template, op in operations:
            where, response = _call(client, method, template, op, ids, headers)
            assert response.status_code < 500, (who, where, response.text)
            if "{" in template:
                walked["object"] += 1
                assert response.status_code == 404, (who, where, response.text)
                assert response.json()["error"]["type"] == "not_found", (who, where)
            elif method == "GET":
                walked["list"] += 1
                assert response.status_code == 200, (who, where, response.text)
                page = response.json()
                assert (page["data"], page["has_more"], page["next_cursor"]) == ([], False, None), (
                    who,
                    where,
                )
            else:
                # A create makes something in the caller's own world (or is refused): it never
                # lands in the owner's.
                walked["create"] += 1
    assert walked["object"] >= 2 * 13 and walked["list"] >= 2 * 5, walked
    # The objects are real and untouched: the owner still sees each one as it was.
    for method, template, op in operations:
        if method == "GET" and "{" in template:
            where, response = _call(client, method, template, op, ids, owner)
            assert response.status_code == 200, (where, response.text)
            assert response.json()["id"] in ids.values(), where
    endpoint = client.get(f"/v1/webhook_endpoints/{ids['endpoint_id']}", headers=owner).json()
    assert (endpoint["url"], endpoint["enabled"], endpoint.get("deleted")) == (URL, True, None)
    for path in ("/v1/webhook_endpoints", "/v1/events"):
        assert len(client.get(path, headers=owner).json()["data"]) == 1, path


def test_the_attempt_stream_sends_a_key_only_its_own_world(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    owner = bearer(new_key(engine, settings, project, "live"))
    ids = _owned_objects(client, engine, settings, owner)
    with engine.connect() as conn:
        number = conn.execute(
            sql("SELECT max(id) FROM {s}.attempts WHERE event_id = :e", settings.db_schema),
            {"e": ids["event_id"]},
        ).scalar_one()
        [item] = read_attempts(conn, settings, [number])
    filters = {"endpoint_id": ids["endpoint_id"], "event_id": ids["event_id"]}
    assert StreamFilter(project_id=project, mode="live", **filters).matches(item)
    for project_id, mode in ((project + "-other", "live"), (project, "test")):
        assert not StreamFilter(project_id=project_id, mode=mode).matches(item)
        assert not StreamFilter(project_id=project_id, mode=mode, **filters).matches(item)
    # The route takes the project and mode from the key, never from the request.
    for who in (project + "-other", project):
        key = new_key(engine, settings, who, "test" if who == project else "live")
        refused = client.get(
            STREAM, params={"project_id": project, "mode": "live"}, headers=bearer(key)
        )
        assert refused.status_code == 400, refused.text
