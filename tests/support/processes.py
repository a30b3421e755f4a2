"""Real subprocesses for the tests: `spawn` starts one in its own session, `Process.stop`
stops it and whatever it spawned by its process group, and `Stack` runs the Procfile's
workers and dispatchers for integration and fault tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.polling import wait_for

BIN = Path(sys.executable).parent


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, signum: int) -> None:
        """Signal the whole process group (a worker and its pool, say)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        else:
            self.signal(signal.SIGKILL)  # reap stragglers of the group, if any


def spawn(
    name: str,
    argv: list[str],
    env: dict[str, str] | None,
    log: Path,
    *,
    cwd: Path | None = None,
) -> Process:
    """Start ``argv`` in its own session, its output (stdout and stderr) in ``log``.

    Args:
        env: the whole environment (None: this process's).
    """
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Process(name, popen, log)


@dataclass
class Stack:
    """Workers and dispatchers sharing one environment (schema, queue, settings)."""

    env: dict[str, str]
    logdir: Path
    processes: list[Process] = field(default_factory=list)

    def _spawn(
        self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> Process:
        log = self.logdir / f"{name}-{len(self.processes)}.log"
        process = spawn(name, argv, {**os.environ, **self.env, **(extra_env or {})}, log)
        self.processes.append(process)
        return process

    def start_worker(
        self, concurrency: int = 8, extra_env: dict[str, str] | None = None
    ) -> Process:
        name = f"worker{len(self.processes)}"
        process = self._spawn(
            name,
            [
                str(BIN / "celery"),
                "-A",
                "workers",
                "worker",
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "-n",
                f"{name}-{os.getpid()}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "-E",
            ],
            extra_env,
        )
        wait_for(
            lambda: " ready." in process.output() or process.popen.poll() is not None,
            timeout=30,
            what=f"{name} to be ready",
        )
        assert process.popen.poll() is None, process.output()
        return process

    def start_dispatcher(self, extra_env: dict[str, str] | None = None) -> Process:
        process = self._spawn("dispatcher", [str(BIN / "webhooks"), "dispatcher"], extra_env)
        wait_for(
            lambda: "dispatcher.started" in process.output() or process.popen.poll() is not None,
            timeout=20,
            what="dispatcher to start",
        )
        assert process.popen.poll() is None, process.output()
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self, tail: int | None = 4000) -> str:
        """Every process's output, the last ``tail`` characters of each (None: all of it)."""
        return "\n".join(
            f"--- {p.name} ---\n{p.output()[-tail:] if tail else p.output()}"
            for p in self.processes
        )


def settle(seconds: float) -> None:
    """Give processes a moment where a test asserts that something does NOT happen."""
    time.sleep(seconds)
