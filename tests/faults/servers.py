"""Private Redis and Postgres servers that a fault test may stop and restart at will.

The machine's own servers are shared with other tests and people, so a test that stops a
server starts its own: on a free port on 127.0.0.1, with its data in a temporary directory,
stopped by the PID we started (never by name).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import Process, spawn


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class PrivateRedis:
    """A throw-away ``redis-server`` (no persistence: a restart loses every message)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.starts += 1  # a log per start: a restart keeps the first run's log
        self.process = spawn(
            "redis",
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ],
            None,
            self.directory / f"redis-{self.starts}.log",
        )  # fmt: skip
        wait_for(lambda: _answers_ping(self.port), timeout=15, what="private redis to answer")
        return self

    def stop(self) -> None:
        """Stop the server we started (SIGTERM, then SIGKILL), by its process group."""
        process, self.process = self.process, None
        if process is not None:
            process.stop(timeout=10)


def postgres_binaries() -> Path | None:
    """The directory of ``initdb``/``pg_ctl``: pgserver's bundled ones, else the system's."""
    spec = importlib.util.find_spec("pgserver")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall/bin")
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


class PrivatePostgres:
    """A throw-away Postgres cluster driven with ``pg_ctl``, restartable on the same port.

    Postgres refuses to run as root, so as root the cluster belongs to the ``postgres`` OS
    user and lives in a directory under the system temp dir that this user owns (pytest's
    temporary directories are ``0700`` root, which it could not enter).
    """

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.port = free_port()
        self.run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self.run_as = (entry.pw_uid, entry.pw_gid)
        self.root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        if self.run_as:
            os.chown(self.root, *self.run_as)
        self.pgdata = self.root / "pgdata"
        self.log = self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        user: dict[str, Any] = {}
        if self.run_as:
            user = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        subprocess.run(
            argv,
            check=True,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            **user,
        )

    def init(self) -> PrivatePostgres:
        self._run(
            str(self.binaries / "initdb"),
            "-D", str(self.pgdata),
            "-U", "postgres",
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
        )  # fmt: skip
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\n"
                # Throw-away data: durability costs time we do not need to spend.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        return self

    def start(self) -> None:
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast``: clients are disconnected at once, data is flushed."""
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.pgdata), "-m", mode,
                  "-w", "-t", "30", "stop")  # fmt: skip

    def pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def destroy(self) -> None:
        """Stop the server (by the PID in its pid file if pg_ctl cannot), delete its files."""
        pid = self.pid()
        if pid is not None:
            try:
                self.stop(mode="immediate")
            except (subprocess.SubprocessError, OSError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(AssertionError):
                    wait_for(lambda: not _alive(pid), timeout=10, what="postgres to exit")
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
