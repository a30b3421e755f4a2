"""API keys through `webhooks key …` as an operator uses them, checked against the HTTP API:
shown once, stored as a hash, revoked, rotated with a grace period, expiring, per network."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.support.api import bearer
from tests.support.cli import cli_ok, run_cli
from tests.support.polling import wait_for
from webhooks.api import create_app
from webhooks.database import sql
from webhooks.settings import Settings

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true"}


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as client:
        yield client


def status(client: TestClient, key: str) -> int:
    return client.get("/v1/webhook_endpoints", headers=bearer(key)).status_code


def test_a_key_is_shown_once_stored_as_a_hash_and_revoked_at_once(
    env: dict[str, str], client: TestClient, engine: Engine, settings: Settings, project: str
) -> None:
    created = cli_ok(env, "key", "create", "--project", project, "--mode", "live", "--json")
    key = created["key"]
    assert key.startswith("sk_live_") and len(key) >= 48
    assert (created["project_id"], created["mode"], created["scope"]) == (project, "live", "write")
    listed = run_cli(env, "key", "list", "--project", project)
    assert key not in listed.stdout and created["id"] in listed.stdout
    assert key not in run_cli(env, "key", "list", "--json").stdout
    with engine.connect() as conn:
        stored = conn.execute(
            sql("SELECT key_hash FROM {s}.api_keys WHERE id = :id", settings.db_schema),
            {"id": created["id"]},
        ).scalar_one()
    assert stored == hashlib.sha256(key.encode()).hexdigest()
    assert status(client, key) == 200
    cli_ok(env, "key", "revoke", created["id"])
    assert status(client, key) == 401
    assert "revoked" in run_cli(env, "key", "list", "--project", project).stdout


def test_a_rotated_key_works_until_its_grace_ends_and_the_new_one_works(
    env: dict[str, str], client: TestClient, project: str
) -> None:
    old = cli_ok(env, "key", "create", "--project", project, "--mode", "test", "--json")
    new = cli_ok(env, "key", "rotate", old["id"], "--grace", "2s", "--json")
    assert new["key"].startswith("sk_test_") and new["key"] != old["key"]
    assert (new["project_id"], new["mode"]) == (project, "test")
    assert status(client, old["key"]) == 200
    assert status(client, new["key"]) == 200
    wait_for(lambda: status(client, old["key"]) == 401, timeout=10, what="the grace to end")
    assert status(client, new["key"]) == 200


def test_an_expired_key_is_refused(env: dict[str, str], client: TestClient, project: str) -> None:
    created = cli_ok(
        env, "key", "create", "--project", project, "--mode", "live", "--expires-in", "1s", "--json"
    )
    wait_for(lambda: status(client, created["key"]) == 401, timeout=10, what="the key to expire")


def test_a_key_allowed_from_other_networks_is_refused_here(
    env: dict[str, str], client: TestClient, project: str
) -> None:
    elsewhere = cli_ok(
        env,
        "key",
        "create",
        "--project",
        project,
        "--mode",
        "live",
        "--allow-ip",
        "10.0.0.0/8,192.0.2.0/24",
        "--json",
    )
    assert elsewhere["allowed_networks"] == ["10.0.0.0/8", "192.0.2.0/24"]
    assert status(client, elsewhere["key"]) == 403
    here = cli_ok(
        env,
        "key",
        "create",
        "--project",
        project,
        "--mode",
        "live",
        "--allow-ip",
        "127.0.0.1",
        "--json",
    )
    assert status(client, here["key"]) == 200


def test_a_read_key_and_bad_flags(env: dict[str, str], client: TestClient, project: str) -> None:
    read = cli_ok(
        env, "key", "create", "--project", project, "--mode", "live", "--scope", "read", "--json"
    )
    assert read["scope"] == "read"
    refused = client.post(
        "/v1/webhook_endpoints", json={"url": "https://example.com"}, headers=bearer(read["key"])
    )
    assert refused.status_code == 403
    bad = run_cli(env, "key", "create", "--project", project, "--mode", "live", "--allow-ip", "x")
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "--allow-ip" in bad.stderr
    missing = run_cli(env, "key", "revoke", "key_nope")
    assert missing.returncode == 1 and "key_nope" in missing.stderr
