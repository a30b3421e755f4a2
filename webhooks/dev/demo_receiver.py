"""A tiny webhook receiver for `webhooks dev`: it shows what a customer's endpoint sees.

It verifies the Standard Webhooks signature the way a customer's receiver would, with nothing
but the standard library (deliberately not with `webhooks.signing`: the point is to check our
signatures from the outside), prints one line per request and answers ``204``, or ``401`` when
the signature does not verify. It is for development only: it binds 127.0.0.1.

Failure on demand: some paths answer as a bad day would, whatever the signature, so a
developer can watch retries, timeouts and ``Retry-After`` without writing a server
(`failure_for_path`):

- ``/status/CODE`` answers CODE (200 to 599);
- ``/slow/MS`` answers 200 after MS milliseconds (at most `MAX_SLOW_MS`);
- ``/hang`` never answers: it holds the connection until the client gives up;
- ``/retry-after/S`` answers 503 with ``Retry-After: S``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from webhooks.display import escape_controls

__all__ = ["DemoReceiver", "Failure", "ReceivedWebhook", "failure_for_path", "verify_signature"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
# Standard Webhooks receivers refuse timestamps this far from their clock (replay protection).
TIMESTAMP_TOLERANCE_SECONDS = 5 * 60
MAX_BODY_BYTES = 1024 * 1024
# Longer than any sender's deadline (ours is 10 s), short enough not to pin a thread for long.
MAX_SLOW_MS = 60_000
# A client that never hangs up on /hang is let go after this long (ours hangs up at 10 s).
MAX_HANG_SECONDS = 300.0
# Retry-After values beyond a day say nothing more about backoff (ours clamps to the window).
MAX_RETRY_AFTER_SECONDS = 86_400

_FAILURE_PATH = re.compile(r"^/(status|slow|hang|retry-after)(?:/([^/]*))?/?$")


@dataclass(frozen=True)
class Failure:
    """How to answer a failure-on-demand path, instead of verifying and answering 204/401.

    ``status`` None means never answer (``/hang``); ``delay_seconds`` is waited first.
    """

    status: int | None
    delay_seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    def describe(self) -> str:
        """How it answers, for the receiver's one-line summary."""
        if self.status is None:
            return "hanging until the client gives up"
        delay = f" after {self.delay_seconds * 1000:.0f} ms" if self.delay_seconds else ""
        extra = "".join(f", {k}: {v}" for k, v in self.headers.items())
        return f"answering {self.status}{delay}{extra}"


def failure_for_path(target: str) -> Failure | None:
    """How a failure-on-demand path answers; None for every other path.

    A malformed one (``/status/abc``, ``/slow/-1``) answers 400 with a body that says what
    the path takes, so a typo is seen rather than silently accepted.

    Args:
        target: the request target, path and optional query (``/status/503?x=1``).
    """
    found = _FAILURE_PATH.match(urlsplit(target).path)
    if found is None:
        return None
    kind, argument = found.group(1), found.group(2)
    if kind == "hang":
        return Failure(status=None) if not argument else _misused("/hang takes no argument")
    number = int(argument) if argument and argument.isascii() and argument.isdigit() else None
    if kind == "status":
        if number is None or not 200 <= number <= 599:
            return _misused("use /status/CODE with CODE from 200 to 599, e.g. /status/503")
        return Failure(status=number)
    if kind == "slow":
        if number is None:
            return _misused("use /slow/MS with MS in milliseconds, e.g. /slow/12000")
        return Failure(status=200, delay_seconds=min(number, MAX_SLOW_MS) / 1000)
    if number is None or number > MAX_RETRY_AFTER_SECONDS:
        return _misused(
            f"use /retry-after/S with S from 0 to {MAX_RETRY_AFTER_SECONDS} seconds, "
            "e.g. /retry-after/120"
        )
    return Failure(status=503, headers={"retry-after": str(number)})


def _misused(message: str) -> Failure:
    return Failure(status=400, body=message + "\n")


@dataclass(frozen=True)
class ReceivedWebhook:
    """One request the demo receiver got."""

    msg_id: str
    event_type: str
    timestamp: str
    is_signature_valid: bool
    body: bytes
    headers: dict[str, str]
    path: str = ""
    failure: Failure | None = None


def verify_signature(
    secret: str | None,
    *,
    msg_id: str,
    timestamp: str,
    signature_header: str,
    body: bytes,
    now: float | None = None,
) -> bool:
    """Return whether one of the ``v1`` signatures of a request matches ``secret``.

    Args:
        secret: the endpoint's ``whsec_…`` secret; None (not known yet) never verifies.
        msg_id: the ``webhook-id`` header.
        timestamp: the ``webhook-timestamp`` header (unix seconds), which must be within
            five minutes of ``now``.
        signature_header: the ``webhook-signature`` header, space-separated ``v1,<base64>``.
        body: the raw request body, exactly as received.
        now: the current unix time (for tests); the system clock by default.
    """
    if not secret or not secret.startswith(SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        sent_at = int(timestamp)
    except (binascii.Error, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > TIMESTAMP_TOLERANCE_SECONDS:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signature_header.split():
        version, _, signature = candidate.partition(",")
        # compare_digest: a receiver must not leak through timing how much of a forgery matched.
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


class DemoReceiver:
    """An HTTP server on 127.0.0.1 that verifies and prints every webhook it receives.

    ``secret`` may be set after creation: in `webhooks dev` the endpoint, and so its secret,
    only exists once the receiver's URL is known.
    """

    def __init__(
        self,
        secret: str | None = None,
        port: int = 0,
        *,
        path: str = "/webhooks",
        echo: Callable[[str], None] | None = None,
    ) -> None:
        """Create the receiver (it listens once `start` is called).

        Args:
            secret: the endpoint's ``whsec_…`` secret, or None until it is known.
            port: the TCP port on 127.0.0.1; 0 picks a free one (see ``url``).
            path: the path the URL points at (any path is accepted).
            echo: where the one-line summaries go; stdout by default.
        """
        self.secret = secret
        self.received: list[ReceivedWebhook] = []
        self._path = path
        self._echo = echo or _print_line
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        """The URL to register as an endpoint, e.g. ``http://127.0.0.1:50123/webhooks``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self._path}"

    def start(self) -> None:
        """Serve requests in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (slow and hanging answers end at once)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[ReceivedWebhook]:
        """A copy of ``received``, safe to read while requests arrive."""
        with self._lock:
            return list(self.received)

    def _record(self, webhook: ReceivedWebhook) -> None:
        with self._lock:
            self.received.append(webhook)
        if webhook.failure is not None:
            # Such an endpoint has a secret of its own, which this receiver cannot know.
            outcome = f"{webhook.path}: {webhook.failure.describe()}"
        else:
            outcome = "signature valid: " + ("yes" if webhook.is_signature_valid else "no")
        self._echo(f"demo receiver: {webhook.msg_id or '-'} {webhook.event_type or '-'} {outcome}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Silence the default access log: `_record` prints a better line."""

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("content-length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    self._answer(413)
                    return
                body = self.rfile.read(length)
                msg_id = self.headers.get("webhook-id", "")
                timestamp = self.headers.get("webhook-timestamp", "")
                is_valid = verify_signature(
                    receiver.secret,
                    msg_id=msg_id,
                    timestamp=timestamp,
                    signature_header=self.headers.get("webhook-signature", ""),
                    body=body,
                )
                failure = failure_for_path(self.path)
                receiver._record(
                    ReceivedWebhook(
                        msg_id=msg_id,
                        event_type=_event_type(body),
                        timestamp=timestamp,
                        is_signature_valid=is_valid,
                        body=body,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        path=escape_controls(self.path),
                        failure=failure,
                    )
                )
                if failure is None:
                    self._answer(204 if is_valid else 401)
                elif failure.status is None:
                    self._hold_until_client_leaves()
                elif not receiver._stopping.wait(failure.delay_seconds):
                    try:
                        self._answer(failure.status, failure.headers, failure.body.encode())
                    except (BrokenPipeError, ConnectionResetError):
                        # A slow answer the client stopped waiting for: that is the demo.
                        self.close_connection = True

            def do_GET(self) -> None:
                self._answer(405)

            def _answer(
                self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if body:
                    self.send_header("content-type", "text/plain; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _hold_until_client_leaves(self) -> None:
                # The connection is watched, not merely slept on, so the thread ends as
                # soon as the sender gives up (its deadline) rather than minutes later.
                deadline = time.monotonic() + MAX_HANG_SECONDS
                while not receiver._stopping.is_set() and time.monotonic() < deadline:
                    try:
                        readable, _, _ = select.select([self.connection], [], [], 0.2)
                        if readable and not self.connection.recv(1024):
                            break
                    except OSError:
                        break
                self.close_connection = True

        return Handler


def _event_type(body: bytes) -> str:
    try:
        envelope = json.loads(body)
    except ValueError:
        return ""
    value = envelope.get("type") if isinstance(envelope, dict) else None
    return value if isinstance(value, str) else ""


def _print_line(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
