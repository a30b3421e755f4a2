"""The Procfile, unchanged, under `honcho start`, against the real Postgres and broker.

This is what "run it on one box" means in deploy/README.md: one command starts the worker,
the dispatcher and Flower; an event published by the API reaches the customer's endpoint;
Flower wants its password; and stopping honcho leaves no process behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.acceptance.support import (
    FLOWER_BASIC_AUTH,
    ROOT,
    flower_get,
    process_env,
    procfile,
    wait_for_flower,
)
from tests.support.deliveries import new_endpoint, publish_one, wait_for_state
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import BIN, Process, spawn
from tests.support.receivers import Receiver
from webhooks.settings import Settings

HONCHO_STOP_SECONDS = 30.0


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children, …), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid …": comm may hold spaces and parentheses.
            fields = stat.rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture(scope="module")
def flower_port() -> int:
    # honcho gives each Procfile line its own PORT: the base, +100 for the second line, …
    # so the base is chosen to land Flower's on a free port.
    index = list(procfile()).index("flower")
    while True:
        port = free_port()
        if port - 100 * index >= 1024:
            return port


@pytest.fixture(scope="module")
def honcho(
    env: dict[str, str], flower_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """`honcho start` on the real Procfile, in its own process group."""
    base_port = flower_port - 100 * list(procfile()).index("flower")
    full_env = process_env(
        env, FLOWER_BASIC_AUTH=FLOWER_BASIC_AUTH, PORT=str(base_port), WORKER_CONCURRENCY="4"
    )
    full_env.pop("WEBHOOKS_DEV", None)
    process = spawn(
        "honcho",
        [str(BIN / "honcho"), "start", "--no-colour", "--procfile", "Procfile"],
        full_env,
        tmp_path_factory.mktemp("honcho") / "honcho.log",
        cwd=ROOT,
    )
    try:
        wait_for(
            lambda: "worker.1" in process.output() and " ready." in process.output(),
            timeout=60,
            interval=0.2,
            what="the Procfile's worker to be ready under honcho",
        )
        wait_for_flower(process, flower_port, timeout=60)
        yield process
    finally:
        process.stop(timeout=HONCHO_STOP_SECONDS)
        print(f"--- honcho ---\n{process.output()[-6000:]}")


@pytest.mark.slow
def test_procfile_under_honcho_delivers_guards_flower_and_stops_every_process(
    honcho: Process,
    flower_port: int,
    engine: Engine,
    settings: Settings,
    receiver: Receiver,
) -> None:
    path = f"/honcho/{secrets.token_hex(4)}"
    project = f"proj_{secrets.token_hex(4)}"
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)

    wait_for_state(engine, settings, event_id, "succeeded", timeout=30)
    (request,) = receiver.received(path)
    assert request.headers["webhook-id"] == event_id

    assert flower_get(flower_port, "/api/tasks", is_authenticated=False).status_code == 401
    assert flower_get(flower_port, "/api/tasks").status_code == 200

    children = descendants(honcho.popen.pid)
    output = honcho.output()
    for name in procfile():
        assert f"{name}.1" in output, f"honcho did not start {name}"
    assert len(children) >= len(procfile()), children

    os.killpg(honcho.popen.pid, signal.SIGTERM)
    try:
        code = honcho.popen.wait(HONCHO_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"honcho did not stop within {HONCHO_STOP_SECONDS:.0f}s of SIGTERM")
    assert code is not None
    try:
        wait_for(
            lambda: not any(is_running(pid) for pid in children),
            timeout=10,
            interval=0.2,
            what="honcho's children to exit",
        )
    except AssertionError:
        survivors = sorted(pid for pid in children if is_running(pid))
        pytest.fail(f"still running after honcho stopped: {survivors}")
