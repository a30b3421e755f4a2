"""`webhooks dev` run again on the same data directory reuses its demo endpoint, and tells
the demo's story in order: the event is published, then delivered."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.processes import BIN
from webhooks.database import sql
from webhooks.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_dev(env: dict[str, str], data_dir: Path) -> str:
    result = subprocess.run(
        [str(BIN / "webhooks"), "dev", "--exit-after-demo", "--data-dir", str(data_dir),
         "--flower-port", str(free_port())],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def demo_story(output: str) -> tuple[str, str]:
    """The demo endpoint's id and the demo event's id, after checking the lines' order."""
    endpoint = re.search(r"^demo endpoint (ep_\w+) -> ", output, re.MULTILINE)
    published = re.search(r"^published (evt_\w+) \(", output, re.MULTILINE)
    assert endpoint and published, output
    event_id = published.group(1)
    lines = output.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith(f"published {event_id}"))
    # The receiver and the worker report the delivery; neither may come before the publish.
    reported = [i for i, line in enumerate(lines) if event_id in line and i != said]
    assert reported and min(reported) > said, output
    assert f"demo receiver: {event_id} deployment.succeeded signature valid: yes" in output
    return endpoint.group(1), event_id


@pytest.mark.slow
def test_a_second_run_reuses_the_demo_endpoint_with_a_new_secret_and_tells_it_in_order(
    env: dict[str, str], engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    first_endpoint, first_event = demo_story(run_dev(env, tmp_path))
    second_endpoint, second_event = demo_story(run_dev(env, tmp_path))

    assert second_endpoint == first_endpoint
    assert second_event != first_event
    with engine.connect() as conn:
        rows = conn.execute(
            sql(
                "SELECT id, enabled FROM {s}.endpoints WHERE project_id = 'proj_demo'",
                settings.db_schema,
            )
        ).all()
    assert [tuple(row) for row in rows] == [(first_endpoint, True)]
