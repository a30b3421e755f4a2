"""`webhooks dev` serves the HTTP API too, on a free port, and prints a curl with a test key
and a portal link for its demo project; run again on the same data directory it reuses its
demo endpoint, and it tells the demo's story in order: published, then delivered."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest
from sqlalchemy.engine import Engine

from tests.support.ports import free_port
from tests.support.processes import BIN
from webhooks import clock
from webhooks.database import sql
from webhooks.keys import authenticate
from webhooks.portal_sessions import open_portal_session
from webhooks.settings import Settings


def run_dev_demo(env: dict[str, str], data_dir: os.PathLike[str]) -> str:
    """Run `webhooks dev --exit-after-demo`, insist on exit 0, and return its output."""
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


def test_dev_serves_the_api_and_prints_a_curl_with_a_test_key_of_the_demo_project(
    env: dict[str, str], engine: Engine, settings: Settings, tmp_path: os.PathLike[str]
) -> None:
    output = run_dev_demo(env, tmp_path)
    served = re.search(r"HTTP API +(http://127\.0\.0\.1:\d+)/v1/openapi\.json", output)
    assert served, output
    assert re.search(r"api +\| .*Uvicorn running on " + re.escape(served.group(1)), output)
    curl = re.search(
        r"curl -s (\S+)/v1/events/simulate -H 'Authorization: Bearer (sk_test_\w+)'", output
    )
    assert curl and curl.group(1) == served.group(1), output
    with engine.begin() as conn:
        key = authenticate(conn, settings.db_schema, curl.group(2), clock.now())
    assert (key.project_id, key.mode) == ("proj_demo", "test")
    portal = re.search(re.escape(served.group(1)) + r"/portal/enter/(pl_[\w-]+)", output)
    assert portal, output
    with engine.begin() as conn:
        session, _ = open_portal_session(conn, settings.db_schema, portal.group(1), clock.now())
    assert (session.project_id, session.mode) == ("proj_demo", "live")


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
    env: dict[str, str], engine: Engine, settings: Settings, tmp_path: os.PathLike[str]
) -> None:
    first_endpoint, first_event = demo_story(run_dev_demo(env, tmp_path))
    second_endpoint, second_event = demo_story(run_dev_demo(env, tmp_path))

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


@pytest.mark.slow
def test_a_second_ctrl_c_during_shutdown_still_stops_every_process_and_exits_0(
    env: dict[str, str], tmp_path: os.PathLike[str]
) -> None:
    flower_port = free_port()
    dev = subprocess.Popen(
        [str(BIN / "webhooks"), "dev", "--data-dir", str(tmp_path),
         "--flower-port", str(flower_port)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert dev.stdout is not None
    seen: list[str] = []
    try:
        for line in dev.stdout:
            seen.append(line)
            if "Press Ctrl-C to stop." in line:
                break
        output = "".join(seen)
        served = re.search(r"HTTP API +http://127\.0\.0\.1:(\d+)/", output)
        assert served, output

        # An impatient user (or `timeout`): Ctrl-C, and again while the first is being handled.
        dev.send_signal(signal.SIGINT)
        time.sleep(0.05)
        dev.send_signal(signal.SIGINT)
        rest, _ = dev.communicate(timeout=90)
    finally:
        if dev.poll() is None:
            dev.kill()

    assert dev.returncode == 0, output + rest
    assert rest.count("stopping...") == 1, rest
    assert "Traceback" not in rest, rest
    for port in (int(served.group(1)), flower_port):  # the API and Flower were stopped too
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
