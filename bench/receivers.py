"""The receivers every benchmark posts to, all on 127.0.0.1, all started by the harness.

- The fast receiver: nginx with ``return 204`` and an access log of arrival times
  (``$msec``, millisecond resolution) when nginx is installed (``apt-get install -y
  nginx-light``); otherwise `bench.pyreceiver` in ``fast`` mode, whose own top rate the
  harness measures and prints so a reader can see it is not the bottleneck.
- The black hole: accepts and never answers (`bench.pyreceiver` ``blackhole``).
- The big responder: ``200`` with a 50 MB body (`bench.pyreceiver` ``big``).

Each receiver logs one line per request, ``<unix time> <path> <webhook-id> <status>``; a run
reads the lines written after the offset it noted when it started.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import Process, Processes, wait_until

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    log_format arrival '$msec $request_uri $http_webhook_id $status';
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 1m;
    client_max_body_size 10m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log {dir}/arrivals.log arrival;
        location / {{ return 204; }}
    }}
}}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def nginx_binary() -> str | None:
    """The nginx executable, if installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def nginx_version() -> str | None:
    binary = nginx_binary()
    if binary is None:
        return None
    out = subprocess.run(  # noqa: S603 (the nginx found on PATH)
        [binary, "-v"], capture_output=True, text=True, check=False
    )
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


@dataclass(frozen=True)
class Arrival:
    """One request as the receiver logged it."""

    at: float
    path: str
    webhook_id: str
    status: str


@dataclass
class Receiver:
    """A running receiver: its base URL and its arrival log."""

    kind: str
    port: int
    log: Path
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def offset(self) -> int:
        """Where the log ends now: a run reads what comes after."""
        return self.log.stat().st_size if self.log.exists() else 0

    def arrivals(self, offset: int = 0) -> list[Arrival]:
        """Requests logged after ``offset``."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        out = []
        for line in data.decode("latin-1").splitlines():
            parts = line.split(" ")
            if len(parts) == 4:
                out.append(Arrival(float(parts[0]), parts[1], parts[2], parts[3]))
        return out


class Receivers:
    """Starts the receivers a benchmark needs and stops them, by pid, when it ends."""

    def __init__(self, prefer_nginx: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-receivers-"))
        self.processes = Processes(self.dir, env={})
        self.prefer_nginx = prefer_nginx
        self._fast: Receiver | None = None
        self._blackhole: Receiver | None = None
        self._big: Receiver | None = None

    def fast(self) -> Receiver:
        if self._fast is None:
            binary = nginx_binary() if self.prefer_nginx else None
            if binary is not None:
                self._fast = self._start_nginx(binary)
            else:
                self._fast = self._start_python("fast")
        return self._fast

    def blackhole(self) -> Receiver:
        if self._blackhole is None:
            self._blackhole = self._start_python("blackhole")
        return self._blackhole

    def big(self) -> Receiver:
        if self._big is None:
            self._big = self._start_python("big")
        return self._big

    def _start_nginx(self, binary: str) -> Receiver:
        port = free_port()
        home = self.dir / "nginx"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (home / sub).mkdir(parents=True, exist_ok=True)
            (home / sub).chmod(0o777)
        conf = home / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=home, port=port))
        process = self.processes.spawn(
            "nginx",
            [binary, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")],
            ready=None,
        )
        if not wait_until(lambda: _listening(port), timeout=10):
            raise RuntimeError(f"nginx did not listen: {(home / 'error.log').read_text()}")
        return Receiver("nginx", port, home / "arrivals.log", process)

    def _start_python(self, mode: str) -> Receiver:
        port = free_port()
        log = self.dir / f"{mode}.log"
        process = self.processes.spawn(
            f"receiver-{mode}",
            [
                sys.executable,
                "-m",
                "bench.pyreceiver",
                "--mode",
                mode,
                "--port",
                str(port),
                "--log",
                str(log),
            ],
            ready="listening on",
            timeout=15,
        )
        return Receiver(f"python-{mode}", port, log, process)

    def stop(self) -> None:
        self.processes.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Receivers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
