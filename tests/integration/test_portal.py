"""The portal through FastAPI's TestClient, against a real Postgres: links made by the API
(single use, expiring, revocable, only hashed), the exchange for a cookie, the security
headers, escaping of what a receiver sent, CSRF, and the actions through the API's paths."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.engine import Engine

from tests.support.api import bearer, new_key
from tests.support.deliveries import expand, new_endpoint, publish_expanded
from webhooks import clock
from webhooks.api import create_app
from webhooks.database import sql
from webhooks.settings import Settings

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true", "WEBHOOKS_PORTAL_TTL": "30m"}
URL = "https://hooks.example.com/x"
HOSTILE_BODY = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan, which disposes of the app's engine at the end
        yield app


@pytest.fixture(scope="module")
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


def portal_link(client: TestClient, key: str) -> dict[str, str]:
    response = client.post("/v1/webhook_portal_sessions", headers=bearer(key))
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


def browser(app: FastAPI, base_url: str = "http://127.0.0.1") -> TestClient:
    """A fresh browser: its own cookie jar, redirects not followed."""
    return TestClient(app, base_url=base_url, follow_redirects=False)


def open_link(visitor: TestClient, link: str) -> Response:
    """Open a portal link as a browser does: its page uses nothing up and posts itself
    (portal.js); an unusable link's GET is its error page."""
    shown = visitor.get(link)
    if shown.status_code != 200:
        return shown
    assert "data-autosubmit" in shown.text and "set-cookie" not in shown.headers
    return visitor.post(link)


def sign_in(
    app: FastAPI, engine: Engine, settings: Settings, project: str, mode: str = "live"
) -> TestClient:
    key = new_key(engine, settings, project, mode)
    api = browser(app)
    link = api.post("/v1/webhook_portal_sessions", headers=bearer(key)).json()["url"]
    visitor = browser(app)
    assert open_link(visitor, link).status_code == 303
    return visitor


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def test_a_write_key_gets_a_single_use_link_valid_for_the_ttl_and_only_its_hash_is_stored(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    before = clock.now()
    body = portal_link(client, new_key(engine, settings, project))
    assert body["object"] == "webhook_portal_session" and body["id"].startswith("ps_")
    assert (body["project_id"], body["mode"], body["opened_at"]) == (project, "live", None)
    assert body["url"].startswith("/portal/enter/pl_")
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=29) < expires - before <= timedelta(minutes=30, seconds=5)
    token = body["url"].rsplit("/", 1)[1]
    with engine.connect() as conn:
        rows = conn.execute(sql("SELECT * FROM {s}.portal_sessions", settings.db_schema)).all()
    assert token not in json.dumps([list(map(str, r)) for r in rows])


def test_a_read_key_or_no_key_gets_no_link(
    client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    read = new_key(engine, settings, project, scope="read")
    refused = client.post("/v1/webhook_portal_sessions", headers=bearer(read))
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission"
    assert client.post("/v1/webhook_portal_sessions").status_code == 401


def test_the_link_is_absolute_when_a_public_url_is_set(
    engine: Engine, settings: Settings, project: str
) -> None:
    public = replace(settings, public_url="https://hooks.example.com/webhooks")
    with TestClient(create_app(public)) as other:
        body = portal_link(other, new_key(engine, settings, project))
    assert body["url"].startswith("https://hooks.example.com/webhooks/portal/enter/pl_")


def test_opening_the_link_sets_a_session_cookie_and_redirects_to_a_url_without_the_token(
    app: FastAPI, client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    link = portal_link(client, new_key(engine, settings, project))["url"]
    visitor = browser(app)
    opened = open_link(visitor, link)
    assert opened.status_code == 303
    assert opened.headers["location"] == "/portal/"
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith("webhooks_portal=pss_")
    for attribute in ("HttpOnly", "SameSite=lax", "Path=/portal", "Max-Age="):
        assert attribute.lower() in cookie.lower(), (attribute, cookie)
    assert "secure" not in cookie.lower()  # plain HTTP is allowed in this module
    assert opened.headers["referrer-policy"] == "no-referrer"
    home = visitor.get("/portal/")
    assert home.status_code == 200
    assert project in home.text and "No endpoints yet" in home.text


def test_fetching_a_link_as_a_mail_scanner_or_chat_preview_does_not_use_it_up(
    app: FastAPI, client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    link = portal_link(client, new_key(engine, settings, project))["url"]
    for _ in range(2):
        fetched = browser(app).get(link)  # a bot: no script, never posts
        assert fetched.status_code == 200 and "set-cookie" not in fetched.headers
        assert 'method="post"' in fetched.text and link in fetched.text
        assert "no-store" in fetched.headers["cache-control"]
    visitor = browser(app)
    opened = open_link(visitor, link)
    assert opened.status_code == 303 and opened.headers["set-cookie"].startswith("webhooks_")
    assert visitor.get("/portal/").status_code == 200
    again = browser(app).post(link)
    assert again.status_code == 410 and "already used" in again.text


def test_the_cookie_is_secure_unless_plain_http_is_allowed(
    engine: Engine, settings: Settings, project: str
) -> None:
    strict = create_app(replace(settings, api_allow_http=False))
    key = new_key(engine, settings, project)
    with TestClient(strict, base_url="https://testserver", follow_redirects=False) as api:
        link = api.post("/v1/webhook_portal_sessions", headers=bearer(key)).json()["url"]
        opened = open_link(api, link)
        plain = browser(strict, "http://testserver")
        refused = plain.get("/portal/")
    assert opened.status_code == 303 and "secure" in opened.headers["set-cookie"].lower()
    assert refused.status_code == 403 and "https" in refused.text


def test_a_second_use_of_the_link_fails_clearly_and_signs_nobody_in(
    app: FastAPI, client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    link = portal_link(client, new_key(engine, settings, project))["url"]
    assert open_link(browser(app), link).status_code == 303
    again = browser(app)
    second = again.get(link)
    assert second.status_code == 410
    assert "already used" in second.text and "set-cookie" not in second.headers
    assert again.get("/portal/").status_code == 401
    unknown = browser(app).get("/portal/enter/pl_nothing")
    assert unknown.status_code == 401 and "not valid" in unknown.text
    assert "Endpoints" not in unknown.text  # the error page and nothing else


def test_an_expired_link_and_an_expired_session_show_the_error_page(
    app: FastAPI,
    client: TestClient,
    engine: Engine,
    settings: Settings,
    project: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = new_key(engine, settings, project)
    unused = portal_link(client, key)["url"]
    visitor = browser(app)
    assert open_link(visitor, portal_link(client, key)["url"]).status_code == 303
    assert visitor.get("/portal/").status_code == 200
    # Only the server's clock moves. freezegun would move the test client's too, and the client
    # would drop the expired cookie itself, so the server's own check would never be reached.
    later = clock.now() + timedelta(minutes=31)
    monkeypatch.setattr(clock, "now", lambda: later)
    expired = browser(app).get(unused)
    assert expired.status_code == 410 and "expired" in expired.text
    ended = visitor.get("/portal/")
    assert ended.status_code == 401 and "session has ended" in ended.text


def test_a_revoked_session_ends_its_link_and_its_cookie(
    app: FastAPI, client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    key = new_key(engine, settings, project)
    opened, unopened = portal_link(client, key), portal_link(client, key)
    visitor = browser(app)
    assert open_link(visitor, opened["url"]).status_code == 303
    other = new_key(engine, settings, project, "test")
    assert (
        client.delete(f"/v1/webhook_portal_sessions/{opened['id']}", headers=bearer(other))
    ).status_code == 404
    read = new_key(engine, settings, project, scope="read")
    assert (
        client.delete(f"/v1/webhook_portal_sessions/{opened['id']}", headers=bearer(read))
    ).status_code == 403
    for session in (opened, unopened):
        revoked = client.delete(f"/v1/webhook_portal_sessions/{session['id']}", headers=bearer(key))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert "url" not in revoked.json()
    assert visitor.get("/portal/").status_code == 401
    gone = browser(app).get(unopened["url"])
    assert gone.status_code == 410 and "revoked" in gone.text


def test_every_portal_page_has_a_strict_content_security_policy(
    app: FastAPI, engine: Engine, settings: Settings, project: str
) -> None:
    visitor = sign_in(app, engine, settings, project)
    for path in ("/portal/", "/portal/endpoints/new", "/portal/endpoints/ep_none"):
        response = visitor.get(path)
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert "<script>" not in response.text  # no inline script anywhere
    assert browser(app).get("/portal/").headers["content-security-policy"]
    assert (
        visitor.get("/portal/static/portal.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )


def _hostile_attempt(engine: Engine, settings: Settings, project: str) -> tuple[str, str]:
    endpoint_id, _ = new_endpoint(engine, settings, URL, project)
    event_id = publish_expanded(engine, settings, project)
    with engine.begin() as conn:
        delivery_id = conn.execute(
            sql("SELECT id FROM {s}.deliveries WHERE event_id = :e", settings.db_schema),
            {"e": event_id},
        ).scalar_one()
        attempt = conn.execute(
            sql(
                "INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, project_id, mode, "
                "number, "
                "trigger, started_at, duration_ms, request_url, request_headers, "
                "response_status, response_headers, response_body, error_kind, "
                "error_message) SELECT :d, :e, :ep, d.project_id, d.mode, "
                "1, 'scheduled', now(), 5, :url, "
                "CAST(:rh AS jsonb), 500, CAST(:sh AS jsonb), :body, 'http_status', 'HTTP 500' "
                "FROM {s}.deliveries d WHERE d.id = :d RETURNING id",
                settings.db_schema,
            ),
            {
                "d": delivery_id,
                "e": event_id,
                "ep": endpoint_id,
                "url": URL,
                "rh": json.dumps({"webhook-id": event_id}),
                "sh": json.dumps({"x-evil": "<b onmouseover=alert(1)>bold</b>"}),
                "body": HOSTILE_BODY,
            },
        ).scalar_one()
    return endpoint_id, f"att_{attempt}"


def test_what_a_receiver_sent_is_shown_as_text_never_as_markup(
    app: FastAPI, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, attempt = _hostile_attempt(engine, settings, project)
    visitor = sign_in(app, engine, settings, project)
    page = visitor.get(f"/portal/attempts/{attempt}")
    assert page.status_code == 200
    assert "&lt;script&gt;document.title=&#39;owned&#39;&lt;/script&gt;" in page.text
    assert "<script>document.title" not in page.text and "<img src=x" not in page.text
    assert "&lt;b onmouseover=alert(1)&gt;bold&lt;/b&gt;" in page.text
    assert "<b onmouseover" not in page.text
    assert "<title>Attempt 1 of evt_" in page.text
    listing = visitor.get(f"/portal/endpoints/{endpoint_id}")
    assert "HTTP 500" in listing.text and "<script>document" not in listing.text


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    app: FastAPI, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, URL, project)
    visitor = sign_in(app, engine, settings, project)
    token = csrf_of(visitor.get(f"/portal/endpoints/{endpoint_id}").text)
    for form in ({}, {"csrf": "0" * 64}):
        refused = visitor.post(f"/portal/endpoints/{endpoint_id}/disable", data=form)
        assert refused.status_code == 403 and "refused" in refused.text
    other = sign_in(app, engine, settings, project)  # another session's token is not this one's
    assert (
        other.post(f"/portal/endpoints/{endpoint_id}/disable", data={"csrf": token}).status_code
        == 403
    )
    assert "Healthy" in visitor.get(f"/portal/endpoints/{endpoint_id}").text
    done = visitor.post(f"/portal/endpoints/{endpoint_id}/disable", data={"csrf": token})
    assert done.status_code == 303
    assert "disabled in the portal" in visitor.get(f"/portal/endpoints/{endpoint_id}").text


def test_actions_add_rotate_test_replay_and_edit_through_the_api_paths(
    app: FastAPI, engine: Engine, settings: Settings, project: str
) -> None:
    visitor = sign_in(app, engine, settings, project, "test")
    token = csrf_of(visitor.get("/portal/endpoints/new").text)
    refused = visitor.post(
        "/portal/endpoints", data={"csrf": token, "url": "ftp://x", "event_types": ""}
    )
    assert refused.status_code == 422 and "https" in refused.text
    added = visitor.post(
        "/portal/endpoints",
        data={"csrf": token, "url": URL, "event_types": "deployment.*", "description": "ci"},
    )
    assert added.status_code == 200
    secret = re.search(r'value="(whsec_[^"]+)"', added.text)
    assert secret and "shown only once" in added.text
    found = re.search(r"/portal/endpoints/(ep_\w+)", added.text)
    assert found
    endpoint_id = found.group(1)
    page = visitor.get(f"/portal/endpoints/{endpoint_id}").text
    assert secret.group(1) not in page and "No attempts yet — send a test event" in page
    rotated = visitor.post(f"/portal/endpoints/{endpoint_id}/rotate-secret", data={"csrf": token})
    new_secret = re.search(r'value="(whsec_[^"]+)"', rotated.text)
    assert new_secret and new_secret.group(1) != secret.group(1)
    assert (
        visitor.post(f"/portal/endpoints/{endpoint_id}/test", data={"csrf": token})
        .headers["location"]
        .endswith("done=tested")
    )
    expand(engine, settings)  # what a dispatcher does just after the commit
    with engine.connect() as conn:
        event_id, mode = conn.execute(
            sql(
                "SELECT e.id, e.mode FROM {s}.events e "
                "JOIN {s}.deliveries d ON d.event_id = e.id "
                "WHERE d.endpoint_id = :ep AND e.type = 'webhook.test'",
                settings.db_schema,
            ),
            {"ep": endpoint_id},
        ).one()
    assert mode == "test"
    replayed = visitor.post(
        f"/portal/events/{event_id}/replay", data={"csrf": token, "endpoint_id": endpoint_id}
    )
    assert replayed.status_code == 303 and "done=re" in replayed.headers["location"]
    edited = visitor.post(
        f"/portal/endpoints/{endpoint_id}/edit",
        data={"csrf": token, "url": URL + "/v2", "event_types": "", "description": "ci"},
    )
    assert edited.status_code == 303
    shown = visitor.get(edited.headers["location"]).text
    assert URL + "/v2" in shown and "All event types" in shown and "Changes saved" in shown
    deliveries = visitor.get(f"/portal/endpoints/{endpoint_id}?type=webhook.test").text
    assert event_id in deliveries
    assert event_id not in visitor.get(f"/portal/endpoints/{endpoint_id}?type=x.y").text


def test_a_session_sees_and_acts_only_in_its_project_and_mode(
    app: FastAPI, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, attempt = _hostile_attempt(engine, settings, project)
    for other in (
        sign_in(app, engine, settings, project, "test"),
        sign_in(app, engine, settings, "x" + project),
    ):
        assert other.get(f"/portal/endpoints/{endpoint_id}").status_code == 404
        assert other.get(f"/portal/attempts/{attempt}").status_code == 404
        token = csrf_of(other.get("/portal/endpoints/new").text)
        assert (
            other.post(f"/portal/endpoints/{endpoint_id}/disable", data={"csrf": token}).status_code
            == 404
        )
        assert endpoint_id not in other.get("/portal/").text


def test_the_endpoints_page_shows_health_and_the_last_24_hours(
    app: FastAPI, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = _hostile_attempt(engine, settings, project)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'UPDATE "{settings.db_schema}".endpoints SET failing_since = now(), '
                "failing_reason = 'HTTP 500' WHERE id = :id"
            ),
            {"id": endpoint_id},
        )
    page = sign_in(app, engine, settings, project).get("/portal/").text
    assert "Failing" in page and "HTTP 500" in page
    assert "0 %" in page and "of 1 attempt" in page
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+Z">', page)
