"""`webhooks dev` serves the HTTP API too, on a free port, and prints a curl with a test key
and a portal link for its demo project."""

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
from webhooks.keys import authenticate
from webhooks.portal_sessions import open_portal_session
from webhooks.settings import Settings


def test_dev_serves_the_api_and_prints_a_curl_with_a_test_key_of_the_demo_project(
    env: dict[str, str], engine: Engine, settings: Settings, tmp_path: os.PathLike[str]
) -> None:
    result = subprocess.run(
        [str(BIN / "webhooks"), "dev", "--exit-after-demo", "--data-dir", str(tmp_path),
         "--flower-port", str(free_port())],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    served = re.search(r"HTTP API +(http://127\.0\.0\.1:\d+)/v1/openapi\.json", result.stdout)
    assert served, result.stdout
    assert re.search(r"api +\| .*Uvicorn running on " + re.escape(served.group(1)), result.stdout)
    curl = re.search(
        r"curl -s (\S+)/v1/events/simulate -H 'Authorization: Bearer (sk_test_\w+)'", result.stdout
    )
    assert curl and curl.group(1) == served.group(1), result.stdout
    with engine.begin() as conn:
        key = authenticate(conn, settings.db_schema, curl.group(2), clock.now())
    assert (key.project_id, key.mode) == ("proj_demo", "test")
    portal = re.search(re.escape(served.group(1)) + r"/portal/enter/(pl_[\w-]+)", result.stdout)
    assert portal, result.stdout
    with engine.begin() as conn:
        session, _ = open_portal_session(conn, settings.db_schema, portal.group(1), clock.now())
    assert (session.project_id, session.mode) == ("proj_demo", "live")


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
