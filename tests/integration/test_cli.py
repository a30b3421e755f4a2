"""The `webhooks` command as operators use it: real subprocesses, real services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import assert_one_line_error, cli_ok, run_cli
from tests.support.deliveries import wait_for_state
from tests.support.receivers import Receiver
from webhooks.settings import Settings

STACK_ENV = {"WEBHOOKS_RETRY_SCHEDULE": "1s", "WEBHOOKS_RETRY_WINDOW": "1s"}


run = run_cli
ok = cli_ok


def test_migrate_is_safe_to_run_twice(env: dict[str, str]) -> None:
    from alembic.script import ScriptDirectory

    import schema

    head = ScriptDirectory(str(Path(schema.__file__).parent)).get_current_head()
    assert f"revision {head}" in ok(env, "migrate")
    assert f"revision {head}" in ok(env, "migrate")


def test_endpoint_lifecycle_shapes_and_secret_shown_only_on_create_and_rotate(
    env: dict[str, str], project: str
) -> None:
    added = ok(
        env,
        "endpoint",
        "add",
        "https://example.com/hooks",
        "--project",
        project,
        "--events",
        "deployment.*,project.created",
        "--json",
    )
    assert added["id"].startswith("ep_") and added["secret"].startswith("whsec_")
    assert added["url"] == "https://example.com/hooks" and added["project_id"] == project
    assert added["event_types"] == ["deployment.*", "project.created"]
    assert added["enabled"] is True

    shown = ok(env, "endpoint", "show", added["id"], "--json")
    assert "secret" not in shown and shown["disabled_reason"] is None
    listed = ok(env, "endpoint", "list", "--project", project, "--json")
    assert [e["id"] for e in listed] == [added["id"]]
    for output in (
        ok(env, "endpoint", "show", added["id"]),
        ok(env, "endpoint", "list"),
        json.dumps(shown),
        json.dumps(listed),
    ):
        assert added["secret"] not in output and "whsec_" not in output

    disabled = ok(env, "endpoint", "disable", added["id"], "--reason", "on fire", "--json")
    assert disabled["enabled"] is False and disabled["disabled_reason"] == "on fire"
    assert ok(env, "endpoint", "enable", added["id"], "--json")["enabled"] is True

    rotated = ok(env, "endpoint", "rotate-secret", added["id"], "--json")
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != added["secret"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["endpoint", "add", "ftp://example.com", "--project", "p"], "must use https"),
        (["endpoint", "add", "https://u:p@example.com", "--project", "p"], "credentials"),
        (
            ["endpoint", "add", "https://example.com", "--project", "p", "--events", "a b"],
            "malformed",
        ),
        (["endpoint", "show", "ep_missing"], "endpoint ep_missing does not exist"),
        (["event", "show", "evt_missing"], "event evt_missing does not exist"),
        (["attempts", "evt_missing"], "event evt_missing does not exist"),
        (["replay", "evt_missing"], "event evt_missing does not exist"),
        (["publish", "a.b", "--project", "p", "--data", "{nope"], "not valid JSON"),
        (["publish", "a.b", "--project", "p", "--data", "[1, 2]"], "must be a JSON object"),
        (["publish", "a.b", "--project", "p", "--data", "@/nonexistent.json"], "cannot read"),
        (["publish", "not a type", "--project", "p", "--data", "{}"], "malformed"),
        (["replay", "--endpoint", "ep_missing", "--since", "yesterday"], "is not a time"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(
    env: dict[str, str], args: list[str], fragment: str
) -> None:
    assert_one_line_error(run(env, *args), 1, fragment)


def test_oversized_payload_is_refused_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"blob": "x" * 262_144}))
    assert_one_line_error(
        run(env, "publish", "a.b", "--project", "p", "--data", f"@{big}"), 1, "262144-byte limit"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["endpoint", "add"],
        ["publish", "a.b"],
        ["replay"],
        ["frobnicate"],
        ["replay", "evt_x", "--since", "1h"],
    ],
)
def test_usage_errors_exit_2_with_one_line(env: dict[str, str], args: list[str]) -> None:
    result = run(env, *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")


def test_database_down_is_one_clear_line(env: dict[str, str]) -> None:
    down = {**env, "DATABASE_URL": "postgresql://postgres:hunter2@127.0.0.1:1/test"}
    result = run(down, "endpoint", "list")
    assert_one_line_error(result, 1, "cannot reach Postgres")
    assert "hunter2" not in result.stderr


def test_missing_schema_says_to_migrate(env: dict[str, str]) -> None:
    result = run({**env, "WEBHOOKS_DB_SCHEMA": "never_migrated"}, "endpoint", "list")
    assert_one_line_error(result, 1, "run `webhooks migrate`")


def test_invalid_setting_is_one_clear_line(env: dict[str, str]) -> None:
    result = run({**env, "WEBHOOKS_TIMEOUT": "soon"}, "endpoint", "list")
    assert_one_line_error(result, 1, "WEBHOOKS_TIMEOUT")


@pytest.mark.usefixtures("stack")
def test_publish_show_attempts_and_replay_as_an_operator_would(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    endpoint = ok(env, "endpoint", "add", receiver.url(path), "--project", project, "--json")
    published = ok(
        env,
        "publish",
        "deployment.succeeded",
        "--project",
        project,
        "--data",
        "-",
        "--idempotency-key",
        "k1",
        "--json",
        stdin='{"n": 1}',
    )
    assert published["id"].startswith("evt_") and published["duplicate"] is False
    again = ok(
        env,
        "publish",
        "deployment.succeeded",
        "--project",
        project,
        "--data",
        '{"n": 1}',
        "--idempotency-key",
        "k1",
        "--json",
    )
    assert again == {"id": published["id"], "duplicate": True, "mode": "live"}
    assert (
        ok(
            env,
            "publish",
            "deployment.succeeded",
            "--project",
            project,
            "--data",
            '{"n": 1}',
            "--idempotency-key",
            "k1",
        ).split()[0]
        == published["id"]
    )

    wait_for_state(engine, settings, published["id"], "succeeded")
    shown = ok(env, "event", "show", published["id"], "--json")
    assert shown["event"]["id"] == published["id"] and shown["event"]["data"] == {"n": 1}
    assert set(shown["event"]) == {"id", "type", "created_at", "project_id", "mode", "data"}
    [delivery] = shown["deliveries"]
    assert {"id", "endpoint_id", "state", "attempt_count", "next_attempt_at", "attempts"} <= set(
        delivery
    )
    assert delivery["state"] == "succeeded" and delivery["endpoint_id"] == endpoint["id"]

    [attempt] = ok(env, "attempts", published["id"], "--endpoint", endpoint["id"], "--json")
    assert set(attempt) >= {
        "number",
        "trigger",
        "endpoint_id",
        "started_at",
        "duration_ms",
        "request_url",
        "response_status",
        "error_kind",
        "error_message",
        "response_body",
    }
    assert (attempt["number"], attempt["trigger"], attempt["response_status"]) == (
        1,
        "scheduled",
        200,
    )
    assert attempt["started_at"].endswith("Z")
    table = ok(env, "attempts", published["id"])
    assert "scheduled" in table and "200" in table
    assert published["id"] in ok(env, "event", "show", published["id"])

    assert ok(env, "replay", published["id"], "--json") == {"queued": 1}
    assert "queued 1" in ok(env, "replay", published["id"], "--endpoint", endpoint["id"])

    def replays_done() -> bool:
        found = ok(env, "attempts", published["id"], "--json")
        return [a["trigger"] for a in found] == ["scheduled", "replay", "replay"]

    from tests.support.polling import wait_for

    wait_for(replays_done, what="two replay attempts")
    assert len(receiver.received(path)) == 3


@pytest.mark.usefixtures("stack")
def test_bulk_replay_of_failed_deliveries_with_dry_run_and_progress(
    env: dict[str, str],
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    receiver.script(path, [500])
    endpoint = ok(env, "endpoint", "add", receiver.url(path), "--project", project, "--json")
    events = [
        ok(
            env,
            "publish",
            "deployment.failed",
            "--project",
            project,
            "--data",
            json.dumps({"i": i}),
            "--json",
        )["id"]
        for i in range(3)
    ]
    for event_id in events:
        wait_for_state(engine, settings, event_id, "failed")

    dry = run(
        env,
        "replay",
        "--endpoint",
        endpoint["id"],
        "--since",
        "1h",
        "--status",
        "failed",
        "--dry-run",
    )
    assert dry.returncode == 0 and "3 deliveries would be replayed" in dry.stdout
    # A 1 s window with a 1 s step leaves room for the first attempt only.
    assert len(receiver.received(path)) == 3

    receiver.script(path, [200])
    result = run(env, "replay", "--endpoint", endpoint["id"], "--since", "1h", "--status", "failed")
    assert result.returncode == 0, result.stderr
    assert "queued 3 deliveries for replay as recovery rec_" in result.stdout
    for event_id in events:
        wait_for_state(engine, settings, event_id, "succeeded")
    again = ok(
        env, "replay", "--endpoint", endpoint["id"], "--since", "1h", "--status", "failed", "--json"
    )
    assert again["queued"] == 0 and again["recovery"].startswith("rec_")


@pytest.mark.usefixtures("stack")
def test_doctor_stats_and_prune_answer_an_operator(env: dict[str, str]) -> None:
    from tests.support.polling import wait_for

    # The dispatcher beats every few seconds; the doctor is healthy once it has.
    wait_for(lambda: run(env, "doctor").returncode == 0, timeout=20, what="a healthy doctor")
    doctor = run(env, "doctor", "--json")
    assert json.loads(doctor.stdout)["healthy"] is True
    stats = ok(env, "stats", "--json")
    assert set(stats["deliveries"]) == {
        "pending",
        "delivering",
        "succeeded",
        "failed",
        "cancelled",
        "total",
    }
    assert stats["deliveries"]["total"] >= 1  # earlier tests of this module delivered
    assert {"enabled", "disabled", "breakers_open"} <= set(stats["endpoints"])
    assert "healthy: all 8 checks passed (with warnings: secrets)" in ok(env, "doctor")
    pruned = ok(env, "prune", "--older-than", "30d", "--dry-run", "--json")
    assert pruned["dry_run"] is True


def test_doctor_exits_1_when_the_broker_is_down(env: dict[str, str]) -> None:
    result = run({**env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}, "doctor", "--timeout", "1s")
    assert result.returncode == 1
    assert "broker" in result.stdout
