"""What the acceptance tests share: the Procfile, Flower's API, headless Chromium.

The processes are started exactly as an operator would start them (the Procfile's command
lines, in a shell, with the virtualenv's ``bin`` first on ``PATH``), with
`tests.support.processes.spawn`.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.polling import wait_for
from tests.support.processes import BIN, Process, spawn

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "Procfile"
IN_CI = os.environ.get("CI", "").lower() == "true"
FLOWER_USER = "ops"
FLOWER_PASSWORD = "s3cret-flower-pw"
FLOWER_BASIC_AUTH = f"{FLOWER_USER}:{FLOWER_PASSWORD}"


def procfile() -> dict[str, str]:
    """The Procfile's processes, in order: name -> command line."""
    processes: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def process_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a Procfile process: the virtualenv first on PATH, then ``env``."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **env, **extra}


def start_flower(env: dict[str, str], port: int, logdir: Path) -> Process:
    """Start Flower with the Procfile's command line and wait until it answers."""
    command = procfile()["flower"]
    full_env = process_env(env, FLOWER_BASIC_AUTH=FLOWER_BASIC_AUTH, PORT=str(port))
    flower = spawn("flower", ["/bin/sh", "-c", command], full_env, logdir / "flower.log", cwd=ROOT)
    try:
        wait_for_flower(flower, port)
    except BaseException:
        flower.stop()
        raise
    return flower


def wait_for_flower(flower: Process, port: int, timeout: float = 30.0) -> None:
    """Wait until Flower answers its (unauthenticated) health check."""

    def is_up() -> bool:
        assert flower.popen.poll() is None, f"Flower exited:\n{flower.output()}"
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).is_success
        return False

    wait_for(is_up, timeout=timeout, interval=0.2, what=f"Flower on port {port}")


def flower_get(port: int, path: str, *, is_authenticated: bool = True, **params: Any) -> Any:
    """GET a Flower URL, with the test's credentials unless told otherwise."""
    auth = (FLOWER_USER, FLOWER_PASSWORD) if is_authenticated else None
    return httpx.get(f"http://127.0.0.1:{port}{path}", params=params, auth=auth, timeout=10)


def flower_tasks(port: int, **params: Any) -> dict[str, dict[str, Any]]:
    """Flower's task list (``/api/tasks``), uuid -> task."""
    response = flower_get(port, "/api/tasks", **params)
    assert response.status_code == 200, response.text
    tasks: dict[str, dict[str, Any]] = response.json()
    return tasks


def parse_repr(text: str | None) -> Any:
    """Flower shows kwargs and results as Python reprs; read one back."""
    assert text, "Flower shows no value"
    return ast.literal_eval(text)


def chromium() -> str:
    """The headless browser's path; skip locally (fail in CI) when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (run .ci/install-browser)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def chromium_args(user_data_dir: Path) -> list[str]:
    """Flags for a headless, quiet, throwaway Chromium that works as root in a container."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,900",
        f"--user-data-dir={user_data_dir}",
    ]
