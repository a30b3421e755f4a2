"""Flower as operators run it: the Procfile's command, a real worker and dispatcher, a real
receiver, and Flower's own API and tasks page (in headless Chromium) as the evidence.

SPEC: Flower requires authentication outside `webhooks dev`; each attempt is one
``webhooks.deliver`` task whose arguments are ids only and whose result shows the status
code or error kind and the duration; a delivery is found by searching its id.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.engine import Engine

from tests.acceptance.support import (
    FLOWER_PASSWORD,
    FLOWER_USER,
    chromium,
    chromium_args,
    flower_get,
    flower_tasks,
    parse_repr,
    process_env,
    procfile,
    start_flower,
)
from tests.support.deliveries import deliveries, new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import Process, Stack
from tests.support.receivers import Receiver
from webhooks.settings import Settings


@dataclass(frozen=True)
class Delivered:
    """One event delivered while Flower watched."""

    event_id: str
    endpoint_id: str
    delivery_id: str
    secret: str
    marker: str  # a value only the payload's data holds
    task: dict[str, Any]  # Flower's record of the attempt


@pytest.fixture(scope="module")
def flower_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def flower(
    stack: Stack, env: dict[str, str], flower_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """Flower started from the Procfile with FLOWER_BASIC_AUTH, watching the stack's worker."""
    process = start_flower(env, flower_port, tmp_path_factory.mktemp("flower"))
    try:
        yield process
    finally:
        process.stop()
        print(f"--- flower ---\n{process.output()[-4000:]}")


@pytest.fixture(scope="module")
def delivered(
    flower: Process,
    flower_port: int,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
) -> Delivered:
    """Publish one event to the receiver and wait until Flower has its successful task."""
    project = f"proj_{secrets.token_hex(4)}"
    endpoint_id, secret = new_endpoint(engine, settings, receiver.url("/flower"), project)
    marker = f"payload-only-{secrets.token_hex(6)}"
    event_id = publish_one(engine, settings, project, data={"marker": marker})
    wait_for_state(engine, settings, event_id, "succeeded")
    (delivery,) = deliveries(engine, settings, event_id)

    def finished_task() -> dict[str, Any] | None:
        for uuid, task in flower_tasks(flower_port).items():
            if uuid.startswith(f"{delivery.id}-a1-") and task.get("state") == "SUCCESS":
                return task
        return None

    task = wait_for(finished_task, timeout=20, interval=0.3, what="Flower to show the task")
    return Delivered(event_id, endpoint_id, delivery.id, secret, marker, task)


@pytest.mark.slow
def test_flower_answers_401_without_credentials_or_with_a_wrong_password(
    flower: Process, flower_port: int
) -> None:
    for path in ("/api/tasks", "/tasks", "/api/workers", "/"):
        response = flower_get(flower_port, path, is_authenticated=False)
        assert response.status_code == 401, (path, response.status_code)
        if not path.startswith("/api/"):  # pages ask the browser for the password
            assert response.headers["www-authenticate"].startswith("Basic"), path
    bad = httpx.get(
        f"http://127.0.0.1:{flower_port}/api/tasks", auth=(FLOWER_USER, "wrong"), timeout=10
    )
    assert bad.status_code == 401
    assert flower_get(flower_port, "/api/tasks").status_code == 200


@pytest.mark.slow
def test_flower_task_shows_ids_status_and_duration_and_never_the_secret_or_payload(
    delivered: Delivered, flower_port: int
) -> None:
    task = delivered.task
    assert task["name"] == "webhooks.deliver"
    kwargs = parse_repr(task["kwargs"])
    assert kwargs["delivery_id"] == delivered.delivery_id
    assert kwargs["event_id"] == delivered.event_id
    assert kwargs["endpoint_id"] == delivered.endpoint_id
    assert kwargs["attempt"] == 1
    assert parse_repr(task["args"]) in ((), [])
    result = parse_repr(task["result"])
    assert result["status"] == 200
    assert result["error_kind"] is None
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    assert result["state"] == "succeeded"
    # Nothing Flower holds about any task, in any field, carries the secret or the data.
    everything = json.dumps(flower_tasks(flower_port))
    assert delivered.secret not in everything
    assert delivered.secret.removeprefix("whsec_") not in everything
    assert delivered.marker not in everything


@pytest.mark.slow
def test_a_delivery_is_found_in_flower_by_searching_its_delivery_or_event_id(
    delivered: Delivered, flower_port: int
) -> None:
    by_delivery = flower_tasks(flower_port, search=delivered.delivery_id)
    assert by_delivery, "searching the delivery id found nothing"
    assert all(uuid.startswith(delivered.delivery_id) for uuid in by_delivery)
    by_event = flower_tasks(flower_port, search=delivered.event_id)
    assert set(by_delivery) <= set(by_event)
    by_kwarg = flower_tasks(flower_port, search=f"kwargs:delivery_id={delivered.delivery_id}")
    assert set(by_kwarg) == set(by_delivery)
    assert flower_tasks(flower_port, search=f"dlv_{secrets.token_hex(8)}") == {}


@pytest.mark.parametrize(
    ("basic_auth", "complaint"),
    [
        (None, "FLOWER_BASIC_AUTH is not set"),
        ("", "FLOWER_BASIC_AUTH is not set"),
        ("ops", "must be user:password"),
        (":pw", "must be user:password"),
        ("ops:CHANGE_ME", "example password"),
    ],
)
def test_flower_refuses_to_start_without_a_usable_basic_auth_setting(
    env: dict[str, str], basic_auth: str | None, complaint: str
) -> None:
    full_env = process_env(env, PORT=str(free_port()))
    full_env.pop("FLOWER_BASIC_AUTH", None)
    full_env.pop("WEBHOOKS_DEV", None)
    if basic_auth is not None:
        full_env["FLOWER_BASIC_AUTH"] = basic_auth
    result = subprocess.run(
        ["/bin/sh", "-c", procfile()["flower"]],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and complaint in lines[0]
    assert result.stdout == ""


@pytest.mark.slow
def test_flower_tasks_page_in_headless_chromium_shows_the_delivery_id(
    delivered: Delivered, flower_port: int, tmp_path: Path
) -> None:
    browser = chromium()
    # Only this module's worker: other tests on the same broker must not push ours off page 1.
    worker = quote(str(delivered.task["worker"]), safe="")
    credentials = f"{FLOWER_USER}:{FLOWER_PASSWORD}@"
    url = f"http://{credentials}127.0.0.1:{flower_port}/tasks?worker={worker}"
    screenshot = tmp_path / "flower-tasks.png"

    def render(*mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                browser,
                *chromium_args(tmp_path / "chromium-profile"),
                # Flower draws its task table with JavaScript from its API: let it run.
                "--virtual-time-budget=8000",
                *mode,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    dom = render("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f"{delivered.delivery_id}-a1-" in dom.stdout, dom.stdout[-3000:]
    assert "Access denied" not in dom.stdout
    shot = render(f"--screenshot={screenshot}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of Flower's tasks page: {screenshot}")
