"""`webhooks dev`: the whole service on one machine, with no set-up, and a delivered demo.

It starts what the Procfile starts (a worker, the dispatcher, Flower, the HTTP API on a free
port, with a test key to call it with), plus embedded Postgres
and Redis when ``DATABASE_URL`` / ``CELERY_BROKER_URL`` are unset, and a demo receiver; then
it registers the receiver as an endpoint, publishes an event and waits until the event is
delivered, so a newcomer sees one webhook go all the way through.

Everything is driven through the public ``webhooks`` CLI and ``celery`` in subprocesses,
exactly as an operator would run them, so `webhooks dev` also smoke-tests that contract.
Children run in their own sessions: a Ctrl-C reaches only this process, which stops the
children by PID (SIGTERM, then SIGKILL after a few seconds) before the servers they use.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from webhooks.dev.demo_receiver import DemoReceiver

if TYPE_CHECKING:
    from webhooks.dev.embedded import EmbeddedPostgres, EmbeddedRedis

__all__ = ["run_dev"]

DEMO_PROJECT = "proj_demo"
DEMO_EVENT_TYPE = "deployment.succeeded"
DEMO_DATA = '{"deployment_id": "dep_demo", "status": "succeeded"}'
DEMO_PATH = "/webhooks"
DELIVERY_DEADLINE_SECONDS = 30.0
CHILD_STOP_SECONDS = 10.0
CLI_TIMEOUT_SECONDS = 120.0
API_START_SECONDS = 30.0

_COLORS = ("36", "33", "35", "32", "34", "31")


class DevError(Exception):
    """`webhooks dev` cannot go on; the message is the one ``error:`` line to print."""


class _Stoppable(Protocol):
    url: str

    def stop(self) -> None: ...


class _Console:
    """Whole lines to the terminal from several threads, child output prefixed by its name.

    Lines can be held back (`hold`) while this process waits on something whose effects
    other threads report: the worker and the demo receiver may report a delivery before the
    `webhooks publish` that caused it has even exited, and the story must read in order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._is_color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self._colors: dict[str, str] = {}
        self._held: list[str] | None = None

    def say(self, text: str = "") -> None:
        self._print(text)

    def child(self, name: str, text: str) -> None:
        prefix = f"{name:<10} |"
        if self._is_color:
            color = self._colors.setdefault(name, _COLORS[len(self._colors) % len(_COLORS)])
            prefix = f"\033[{color}m{prefix}\033[0m"
        self._print(f"{prefix} {text}")

    def hold(self) -> None:
        """Keep every line back until `release`."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self, first: str | None = None) -> None:
        """Print ``first``, then the lines held back, in the order they came."""
        with self._lock:
            held, self._held = self._held or [], None
            for line in ([] if first is None else [first]) + held:
                print(line, flush=True)

    def _print(self, line: str) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(line)
            else:
                print(line, flush=True)


@dataclass
class _Child:
    """A process of the Procfile, its output teed to the terminal and to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    reader: threading.Thread = field(repr=False)

    def signal_group(self, signum: int) -> None:
        # The child leads its own process group (start_new_session), so its pool and any
        # helper processes get the signal too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


@dataclass
class _Dev:
    """The state of one `webhooks dev` run, so that shutdown can undo whatever was started."""

    data_dir: Path
    console: _Console
    env: dict[str, str] = field(default_factory=dict)
    servers: list[_Stoppable] = field(default_factory=list)
    children: list[_Child] = field(default_factory=list)
    receiver: DemoReceiver | None = None
    env_file: Path | None = None
    api_url: str = ""
    is_shut_down: bool = False

    # -- start-up ------------------------------------------------------------------------------

    def start_services(self) -> None:
        """Point the children at Postgres and Redis, starting embedded ones where unset."""
        from webhooks.dev import embedded

        self.env = dict(os.environ)
        self.use_or_start("postgres", "DATABASE_URL", embedded.start_postgres)
        self.use_or_start("redis", "CELERY_BROKER_URL", embedded.start_redis)
        # Development only: the demo receiver is plain http on loopback, which the SSRF guard
        # refuses everywhere else. Values already in the environment win.
        self.env.setdefault("WEBHOOKS_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
        self.env.setdefault("WEBHOOKS_ALLOW_HTTP", "true")
        # Says to every child that this is development: Flower may run without a password,
        # and secrets stored in plain text (no WEBHOOKS_SECRET_KEY) are not warned about.
        self.env["WEBHOOKS_DEV"] = "true"
        # Children write through a pipe: unbuffered, so their lines show up as they happen.
        self.env["PYTHONUNBUFFERED"] = "1"

    def use_or_start(
        self, name: str, variable: str, start: Callable[[Path], EmbeddedPostgres | EmbeddedRedis]
    ) -> None:
        """Use the server ``variable`` names, or start an embedded one and name it there."""
        label = f"{name + ':':<10}"
        if self.env.get(variable):
            self.console.say(f"{label}{variable} from the environment")
            return
        started = time.monotonic()
        server = start(self.data_dir / name)
        self.servers.append(server)
        self.env[variable] = server.url
        self.console.say(
            f"{label}embedded, {server.url} "
            f"(ready in {time.monotonic() - started:.1f}s, data in {server.log_path.parent})"
        )

    def migrate(self) -> None:
        self.console.say(self.cli("migrate").strip())

    def start_processes(self, flower_port: int) -> None:
        """Start the Procfile's processes: a worker, the dispatcher, Flower and the API."""
        _require_free_port(flower_port)
        celery = [sys.executable, "-m", "celery", "-A", "workers"]
        queue = self.env.get("WEBHOOKS_QUEUE") or "webhooks"
        self.spawn(
            "worker",
            [*celery, "worker", "-P", "threads", "-c", "8", "-Q", queue, "--loglevel", "INFO"],
        )
        self.spawn("dispatcher", [str(_webhooks_command()), "dispatcher"])
        # The Procfile's own Flower launcher: without FLOWER_BASIC_AUTH it starts only because
        # WEBHOOKS_DEV says this is dev, and then listens on loopback only.
        self.spawn(
            "flower",
            [sys.executable, "-m", "workers.flower"],
            extra_env={
                "FLOWER_PORT": str(flower_port),
                "FLOWER_ADDRESS": "127.0.0.1",
            },
        )
        # On loopback, over plain HTTP (development only), on whatever port is free.
        api_port = _free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.spawn(
            "api",
            [str(_webhooks_command()), "api", "--host", "127.0.0.1", "--port", str(api_port)],
            extra_env={"WEBHOOKS_API_ALLOW_HTTP": "true"},
        )

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        process = subprocess.Popen(  # noqa: S603 - our own commands, fixed arguments
            argv,
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert process.stdout is not None
        reader = threading.Thread(
            target=self._relay,
            args=(name, process.stdout, log_path),
            name=f"dev-{name}-output",
            daemon=True,
        )
        reader.start()
        self.children.append(_Child(name, process, log_path, reader))

    def _relay(self, name: str, stream: IO[bytes], log_path: Path) -> None:
        with stream, log_path.open("ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                self.console.child(name, raw.decode(errors="replace").rstrip())

    # -- the demo ------------------------------------------------------------------------------

    def run_demo(self) -> tuple[str, str]:
        """Register the demo receiver, publish an event and wait for its delivery.

        Returns:
            The endpoint id and the event id.
        """
        self.receiver = DemoReceiver(path=DEMO_PATH, echo=self.console.say)
        self.receiver.start()
        endpoint_id = self.demo_endpoint(self.receiver)
        self.console.say(f"demo endpoint {endpoint_id} -> {self.receiver.url}")
        published = ""
        self.console.hold()
        try:
            event_id = str(
                self.cli_json(
                    "publish", DEMO_EVENT_TYPE, "--project", DEMO_PROJECT, "--data", DEMO_DATA
                )["id"]
            )
            published = f"published {event_id} ({DEMO_EVENT_TYPE}); waiting for its delivery"
        finally:
            self.console.release(published or None)
        self.wait_until_delivered(event_id, endpoint_id)
        return endpoint_id, event_id

    def demo_endpoint(self, receiver: DemoReceiver) -> str:
        """Point the demo endpoint of an earlier run at this run's receiver, or add one.

        The database persists in the data directory, so each run would otherwise add an
        endpoint. The receiver listens on a new port each run and cannot know the old
        secret (it is shown once): the endpoint gets a new one, the old ones stop at once.
        Its pending deliveries go to the new receiver. Other enabled loopback endpoints of
        the project (added to earlier receivers, now gone) would fail and retry for 72 hours:
        they are disabled, kept with their history.
        """
        listed = self.cli_json("endpoint", "list", "--project", DEMO_PROJECT, "--mode", "live")
        earlier = [
            (str(e["id"]), urlsplit(str(e["url"])))
            for e in (listed if isinstance(listed, list) else [])
            if e.get("enabled") and str(e.get("url", "")).startswith("http://127.0.0.1:")
        ]
        reused = next((id_ for id_, url in earlier if url.path == DEMO_PATH), None)
        if reused is None:
            added = self.cli_json("endpoint", "add", receiver.url, "--project", DEMO_PROJECT)
            reused, receiver.secret = str(added["id"]), str(added["secret"])
        else:
            rotated = self.cli_json("endpoint", "rotate-secret", reused, "--grace", "0s")
            receiver.secret = str(rotated["secret"])
            self.cli("endpoint", "update", reused, "--url", receiver.url)
        for endpoint_id, _ in earlier:
            if endpoint_id != reused:
                self.cli(
                    "endpoint", "disable", endpoint_id,
                    "--reason", "replaced by a newer `webhooks dev` demo receiver",
                )  # fmt: skip
        return reused

    def wait_until_delivered(self, event_id: str, endpoint_id: str) -> None:
        deadline = time.monotonic() + DELIVERY_DEADLINE_SECONDS
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check_children()
            shown = self.cli_json("event", "show", event_id)
            for delivery in shown.get("deliveries", []):
                if delivery.get("endpoint_id") == endpoint_id:
                    last = delivery
            if last.get("state") == "succeeded":
                return
            time.sleep(0.5)
        attempts = last.get("attempts") or []
        detail = "no attempt was made"
        if attempts:
            final = attempts[-1]
            detail = (
                f"last attempt: {final.get('error_kind') or 'status'} "
                f"{final.get('response_status') or ''} {final.get('error_message') or ''}"
            )
        raise DevError(
            f"the demo event {event_id} was not delivered within "
            f"{DELIVERY_DEADLINE_SECONDS:.0f}s ({' '.join(detail.split())}); "
            f"see the logs in {self.data_dir / 'logs'}"
        )

    def print_summary(self, event_id: str, endpoint_id: str, flower_port: int) -> None:
        self.console.say()
        self.console.say(f"$ webhooks attempts {event_id}")
        self.console.say(self.cli("attempts", event_id).rstrip())
        self.env_file = self.write_env_file()
        assert self.receiver is not None
        command = _webhooks_command()
        data = '{"deployment_id": "dep_2", "status": "succeeded"}'
        failing_url = self.receiver.url.removesuffix(DEMO_PATH) + "/status/503"
        key = str(
            self.cli_json("key", "create", "--project", DEMO_PROJECT, "--mode", "test")["key"]
        )
        authorization = shlex.quote(f"Authorization: Bearer {key}")
        curl = (
            f"curl -s {self.api_url}/v1/events/simulate -H {authorization}"
            " -H 'Content-Type: application/json' -d '{\"type\": \"deployment.succeeded\"}'"
        )
        self.wait_for_api()
        portal = self.portal_link()
        self.console.say(
            "\n".join(
                [
                    "",
                    "webhooks dev is running:",
                    f"  Flower          http://127.0.0.1:{flower_port}",
                    f"  HTTP API        {self.api_url}/v1/openapi.json",
                    f"  portal          {portal}",
                    "                  (the demo project's page; the link opens once, for 1 h)",
                    f"  demo endpoint   {endpoint_id} -> {self.receiver.url} ({DEMO_PROJECT})",
                    f"  logs            {self.data_dir / 'logs'}",
                    "",
                    "Publish more from another terminal:",
                    f"  . {_shell_path(self.env_file)}",
                    f"  {_shell_path(command)} publish {DEMO_EVENT_TYPE} "
                    f"--project {DEMO_PROJECT} --data {shlex.quote(data)}",
                    "",
                    "Watch retries, timeouts and Retry-After: the demo receiver fails on demand",
                    "at /status/CODE, /slow/MS, /hang and /retry-after/S, e.g.",
                    f"  {_shell_path(command)} endpoint add {failing_url} --project {DEMO_PROJECT}",
                    "",
                    f"Call the HTTP API with a test key of {DEMO_PROJECT} (made for this run):",
                    f"  {curl}",
                    "",
                    "Press Ctrl-C to stop.",
                ]
            )
        )

    def portal_link(self) -> str:
        """A portal link for the demo project's live endpoints, asked of the API as the
        Cloud API's dashboard would, with a write key made for this run."""
        import httpx

        key = str(
            self.cli_json("key", "create", "--project", DEMO_PROJECT, "--mode", "live")["key"]
        )
        answer = httpx.post(
            self.api_url + "/v1/webhook_portal_sessions",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        if answer.status_code != 201:
            raise DevError(f"the HTTP API refused a portal link: {answer.text[:200]}")
        url = str(answer.json()["url"])
        return url if url.startswith("http") else self.api_url + url

    def wait_for_api(self) -> None:
        """Return once the API answers, so the printed curl works when pasted."""
        import httpx

        deadline = time.monotonic() + API_START_SECONDS
        while time.monotonic() < deadline:
            self.check_children()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.api_url + "/v1/openapi.json", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise DevError(
            f"the HTTP API did not answer at {self.api_url} within {API_START_SECONDS:.0f}s"
        )

    def write_env_file(self) -> Path:
        """Write the settings another terminal needs to reach this run's services."""
        names = (
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "WEBHOOKS_ALLOWED_NETWORKS",
            "WEBHOOKS_ALLOW_HTTP",
            "WEBHOOKS_DEV",
        )
        path = self.data_dir / "env"
        lines = [f"export {name}={shlex.quote(self.env[name])}" for name in names]
        path.write_text("# written by `webhooks dev`; valid while it runs\n" + "\n".join(lines))
        return path

    # -- running -------------------------------------------------------------------------------

    def check_children(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise DevError(
                    f"{child.name} exited with code {code}; see its output above or in "
                    f"{child.log_path}"
                )

    def wait_for_interrupt(self) -> None:
        while True:
            self.check_children()
            time.sleep(0.5)

    def cli(self, *args: str) -> str:
        """Run ``webhooks ARGS`` with this run's environment; return its stdout."""
        argv = [str(_webhooks_command()), *args]
        try:
            result = subprocess.run(  # noqa: S603 - our own command, fixed arguments
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DevError(f"`webhooks {args[0]}` did not finish in {exc.timeout:.0f}s") from exc
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            message = lines[-1] if lines else f"exit code {result.returncode}"
            message = message.removeprefix("error:").strip()
            raise DevError(f"`webhooks {' '.join(args[:2])}` failed: {message}")
        return result.stdout

    def cli_json(self, *args: str) -> Any:
        output = self.cli(*args, "--json")
        try:
            return json.loads(output)
        except ValueError as exc:
            raise DevError(f"`webhooks {' '.join(args[:2])} --json` printed no JSON") from exc

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the children (SIGTERM, then SIGKILL), the receiver, then the servers; once."""
        if self.is_shut_down:
            return
        self.is_shut_down = True
        if self.children:
            self.console.say("stopping...")
        for child in self.children:
            if child.process.poll() is None:
                child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_SECONDS
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.say(f"{child.name} did not stop in time; killing it")
                child.signal_group(signal.SIGKILL)
                child.process.wait(5)
            # A worker's pool may outlive its parent by a moment; nothing of the group stays.
            child.signal_group(signal.SIGKILL)
            child.reader.join(2)
        if self.receiver is not None:
            self.receiver.stop()
        for server in reversed(self.servers):
            server.stop()
        if self.env_file is not None:
            self.env_file.unlink(missing_ok=True)


def run_dev(*, data_dir: Path, flower_port: int = 5555, stop_after_demo: bool = False) -> int:
    """Run `webhooks dev` until Ctrl-C; return the exit code.

    Args:
        data_dir: where embedded servers keep their data and children their logs.
        flower_port: Flower's port on 127.0.0.1.
        stop_after_demo: return as soon as the demo event is delivered (for tests and CI).

    Returns:
        0 once the demo event was delivered (and, unless ``stop_after_demo``, after Ctrl-C),
        1 otherwise, after one ``error:`` line on stderr.
    """
    from webhooks.dev.embedded import EmbeddedServerError

    data_dir.mkdir(parents=True, exist_ok=True)
    dev = _Dev(data_dir=data_dir, console=_Console())
    is_delivered = False
    # One handler for the whole run, shutdown included: the first Ctrl-C (or SIGTERM) starts
    # the shutdown and every later one is ignored, so the children are always stopped before
    # the servers they use, whatever arrives meanwhile.
    with _stop_signals():
        try:
            dev.start_services()
            dev.migrate()
            dev.start_processes(flower_port)
            endpoint_id, event_id = dev.run_demo()
            is_delivered = True
            dev.print_summary(event_id, endpoint_id, flower_port)
            if not stop_after_demo:
                dev.wait_for_interrupt()
        except KeyboardInterrupt:
            if not is_delivered:
                _error("interrupted before the demo event was delivered")
        except (DevError, EmbeddedServerError) as exc:
            _error(str(exc))
            return 1
        finally:
            _ignore_stop_signals()
            dev.shutdown()
    return 0 if is_delivered else 1


def _error(message: str) -> None:
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn the first SIGINT or SIGTERM into KeyboardInterrupt, and ignore any after it.

    SIGINT gets a handler of its own too: a shell starts background commands with SIGINT
    ignored, and Python then never raises KeyboardInterrupt, so `webhooks dev` could not be
    stopped the way the banner says. Once one arrived, the shutdown it starts must not be
    abandoned half-way by another (shutdown is bounded by its own timeouts); the previous
    handlers come back when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        _ignore_stop_signals()  # a second signal must not cut the shutdown this one starts
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _ignore_stop_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def _webhooks_command() -> Path:
    # The console script next to this interpreter: works in a venv that was never activated.
    beside = Path(sys.executable).with_name("webhooks")
    if beside.exists():
        return beside
    found = shutil.which("webhooks")
    if found is None:
        raise DevError("the `webhooks` command is not installed; run: pip install -e .")
    return Path(found)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _require_free_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DevError(
                f"port {port} (Flower) is in use; stop what uses it or pass --flower-port"
            ) from exc


def _shell_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return shlex.quote(str(path.relative_to(Path.cwd())))
    return shlex.quote(str(path))
