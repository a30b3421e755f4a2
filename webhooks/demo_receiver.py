"""A tiny webhook receiver for `webhooks dev`: it shows what a customer's endpoint sees.

It verifies the Standard Webhooks signature the way a customer's receiver would, with nothing
but the standard library (deliberately not with `webhooks.signing`: the point is to check our
signatures from the outside), prints one line per request and answers ``204``, or ``401`` when
the signature does not verify. It is for development only: it binds 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["DemoReceiver", "ReceivedWebhook", "verify_signature"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
# Standard Webhooks receivers refuse timestamps this far from their clock (replay protection).
TIMESTAMP_TOLERANCE_SECONDS = 5 * 60
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ReceivedWebhook:
    """One request the demo receiver got."""

    msg_id: str
    event_type: str
    timestamp: str
    is_signature_valid: bool
    body: bytes
    headers: dict[str, str]


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
        """Stop serving and close the socket."""
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
        valid = "yes" if webhook.is_signature_valid else "no"
        self._echo(
            f"demo receiver: {webhook.msg_id or '-'} {webhook.event_type or '-'} "
            f"signature valid: {valid}"
        )

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
                receiver._record(
                    ReceivedWebhook(
                        msg_id=msg_id,
                        event_type=_event_type(body),
                        timestamp=timestamp,
                        is_signature_valid=is_valid,
                        body=body,
                        headers={k.lower(): v for k, v in self.headers.items()},
                    )
                )
                self._answer(204 if is_valid else 401)

            def do_GET(self) -> None:
                self._answer(405)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

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
