"""`webhooks event-types` and the typo warning of `endpoint add --events`, as operators run them."""

from __future__ import annotations

import json
import os
import subprocess

from tests.support.cli import cli_ok, run_cli
from tests.support.processes import BIN
from webhooks.catalogue import CATALOGUE


def test_event_types_lists_the_catalogue_as_a_table_without_a_database() -> None:
    # Nothing to look up: it answers even where no database is configured.
    result = subprocess.run(
        [str(BIN / "webhooks"), "event-types"],
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "DESCRIPTION"]
    assert len(lines) == 1 + len(CATALOGUE)
    rolled_back = next(line for line in lines if line.startswith("deployment.rolled_back "))
    assert "rolled back" in rolled_back


def test_event_types_json_gives_each_type_a_description_and_example_data() -> None:
    listed = cli_ok({}, "event-types", "--json")
    by_type = {item["type"]: item for item in listed}
    assert [item["type"] for item in listed] == [e.type for e in CATALOGUE]
    succeeded = by_type["deployment.succeeded"]
    assert succeeded["description"]
    assert succeeded["example"]["id"].startswith("dep_")
    assert succeeded["example"]["status"] == "succeeded"
    assert {"project.created", "project.updated", "project.deleted"} <= set(by_type)


def test_a_mistyped_event_type_is_subscribed_with_a_warning_naming_the_closest(
    env: dict[str, str], project: str
) -> None:
    result = run_cli(
        env,
        "endpoint", "add", "https://hooks.example.com/in", "--project", project,
        "--events", "deployment.succeded,project.*,deployment.*,endpoint.disabled", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Known types and prefix.* filters that match known types are subscribed silently.
    (warning,) = [
        line for line in result.stderr.strip().splitlines() if "not a known event type" in line
    ]
    assert warning.startswith("warning: deployment.succeded is not a known event type")
    assert "did you mean deployment.succeeded?" in warning
    # Not an error: the API may emit a type before the catalogue knows it.
    created = json.loads(result.stdout)
    assert created["event_types"] == [
        "deployment.succeded",
        "project.*",
        "deployment.*",
        "endpoint.disabled",
    ]
