"""The `webhooks` command run as an operator runs it: a subprocess, in a given environment."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from tests.support.processes import BIN


def run_cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``webhooks ARGS`` as an operator would, in the given environment."""
    return subprocess.run(
        [str(BIN / "webhooks"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def cli_ok(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    """Run ``webhooks ARGS``, insist on success, and return its JSON (with --json) or text."""
    result = run_cli(env, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout + result.stderr


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, fragment: str
) -> None:
    """The command failed with ``code`` and said why in one ``error:`` line holding
    ``fragment``, without a traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr
