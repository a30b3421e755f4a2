"""Event data that cannot be sent as UTF-8 JSON is refused as `InvalidPayload`, whoever
publishes it: the API through `publish()`, an operator through `webhooks publish`. Real
Postgres (nothing is stored), the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.support.cli import run_cli
from tests.support.deliveries import count_rows
from tests.support.processes import BIN
from webhooks import InvalidArgument, InvalidPayload, publish
from webhooks.settings import Settings


def nested(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    inner = data
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return data


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"name": "\ud800"}, "lone surrogate"),
        ({"\udcff": 1}, "lone surrogate"),
        (nested(100_000), "nested too deeply"),
    ],
    ids=["surrogate-value", "surrogate-key", "deep"],
)
def test_publish_refuses_data_that_cannot_be_sent_as_invalid_payload(
    engine: Engine, settings: Settings, project: str, data: dict[str, Any], fragment: str
) -> None:
    before = count_rows(engine, settings, "events")
    with engine.begin() as conn, pytest.raises(InvalidPayload, match=fragment):
        publish(conn, project_id=project, type="a.b", data=data, settings=settings)
    assert count_rows(engine, settings, "events") == before


def test_publish_refuses_a_lone_surrogate_in_an_id_or_key(
    engine: Engine, settings: Settings, project: str
) -> None:
    with engine.begin() as conn, pytest.raises(InvalidArgument, match="project id"):
        publish(conn, project_id="proj_\ud800", type="a.b", data={}, settings=settings)
    with engine.begin() as conn, pytest.raises(InvalidArgument, match="idempotency key"):
        publish(
            conn,
            project_id=project,
            type="a.b",
            data={},
            idempotency_key="k\udfff",
            settings=settings,
        )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "unexpected" not in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"name": "caf\xe9"}', "is not UTF-8 text (byte 0xe9 at offset 13)"),
        (b'{"name": "\\ud800"}', "lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"n": ' + b"1" * 5000 + b"}", "not valid JSON"),
    ],
    ids=["latin-1-file", "surrogate-escape", "deep", "long-number"],
)
def test_cli_data_that_cannot_be_sent_is_one_clear_line(
    env: dict[str, str], project: str, tmp_path: Path, content: bytes, fragment: str
) -> None:
    data_file = tmp_path / "data.json"
    data_file.write_bytes(content)

    from_file = run_cli(env, "publish", "a.b", "--project", project, "--data", f"@{data_file}")
    assert_one_line_error(from_file, fragment)

    assert_one_line_error(publish_from_stdin(env, project, content), fragment)


def publish_from_stdin(
    env: dict[str, str], project: str, content: bytes
) -> subprocess.CompletedProcess[str]:
    """``webhooks publish … --data -`` with ``content`` as raw bytes on stdin."""
    done = subprocess.run(
        [str(BIN / "webhooks"), "publish", "a.b", "--project", project, "--data", "-"],
        env={**os.environ, **env},
        input=content,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
