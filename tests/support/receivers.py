"""The tests' HTTP receivers on 127.0.0.1: `Receiver`, a real server that records every
request, and `BlackHole`, that accepts connections and never answers.

A `Receiver` answers 200 with a JSON body unless told otherwise, per path:

- ``script(path, [500, 500, 200])``: the statuses of the next requests (the last repeats;
  ``HANG`` means "never answer" that request); ``answer(path, status)`` from now on;
- ``reply_headers(path, {...})``, ``delay(path, seconds)``;
- ``hold(path)`` keeps the requests that arrive from now on open until ``release(path)``, to
  keep a worker busy at the moment a fault is injected;
- ``respond(path, responder)`` lets a function build the `Reply` (a receiver that verifies
  signatures, a page for a browser).

The first path segment can pick a misbehaviour instead (see `Receiver` and ``_Handler``):
``/hang`` never answers, ``/trickle`` drips a byte every half second, ``/reset`` resets the
connection mid-body, ``/huge`` sends 50 MB, ``/gzip`` a gzip bomb, ``/redirect`` a 301 to
``/redirected``, ``/error`` a 500, ``/throttle`` a 429 with ``retry-after``, ``/nul`` NUL and
invalid UTF-8, ``/escapes`` terminal escapes, ``/many-headers`` and ``/big-headers``
oversized header blocks.

Every request is recorded with its lower-cased headers, its body, when it arrived and when
its answer was written (or tried: the client may be dead by then), so a fault test can prove
that an answer came only after a worker was killed; a request whose body was cut short (its
sender died while writing) is kept apart, as torn. TCP connections are counted, so a test can
assert that the SSRF guard sent nothing at all; a server-side SSL context makes it HTTPS.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# A held or hanging request is let go at the latest after this long, so a forgotten
# `release` cannot keep server threads alive past the test.
MAX_HOLD_SECONDS = 30.0
HANG = -1
HUGE_BODY_BYTES = 50 * 1024 * 1024
ESCAPES_BODY = "\x1b[2J\x1b[31mred\x9b31m\x07bell\r\nnext\x7f"
_CHUNK = b"a" * (64 * 1024)


@dataclass
class Request:
    """One request as it arrived (header names lower-cased) and when it was answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float
    answered_at: float | None = None
    answer_failed: bool = False

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass(frozen=True)
class Reply:
    """What a receiver answers: a status, a body and headers (content-length is added)."""

    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


Responder = Callable[[Request], Reply]


def _status_reply(status: int) -> Reply:
    return Reply(status, b'{"ok": true}' if status < 300 else b'{"ok": false}')


def _gzip_of_zeros(size: int) -> bytes:
    """A gzip member inflating to `size` zero bytes, built without holding `size` bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    parts.append(compressor.flush())
    return b"".join(parts)


def _fillers(count: int, size: int) -> dict[str, str]:
    return {f"x-filler-{i}": "f" * size for i in range(count)}


# Misbehaviours that are one whole answer, by first path segment.
_CANNED: dict[str, Callable[[Receiver], Reply]] = {
    "error": lambda r: Reply(500, b"boom", {}),
    "throttle": lambda r: Reply(429, b"slow down", {"retry-after": "120"}),
    "redirect": lambda r: Reply(301, b"", {"location": r.url("/redirected")}),
    "nul": lambda r: Reply(200, b"a\x00b\xff", {}),
    "escapes": lambda r: Reply(200, ESCAPES_BODY.encode(), {"content-type": "text/plain"}),
    "gzip": lambda r: Reply(
        200, r.gzip_bomb, {"content-encoding": "gzip", "content-type": "text/plain"}
    ),
    # 75 KB of headers: under the HTTP parser's limit, far over what is kept.
    "many-headers": lambda r: Reply(200, b"ok", _fillers(30, 2500)),
    # 320 KB: over the parser's 100 KB limit whatever the reads' sizes. With 160 KB, a block
    # that was 96 KB at one read and whole at the next (reads of up to 64 KB) parsed (CI).
    "big-headers": lambda r: Reply(200, b"", _fillers(80, 4000)),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Dozens of worker threads connect at once; the default backlog of 5 would refuse some.
    request_queue_size = 128
    owner: Receiver

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.owner.note_connection()
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up on purpose (deadline, body cap, killed worker) are the point.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        tls = self.server.owner.tls_context
        if tls is not None:
            self.request = tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        super().finish()
        # socketserver closes the socket it accepted, not the TLS socket wrapping it.
        if self.server.owner.tls_context is not None:
            self.request.close()

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("content-length") or 0)
        request = Request(
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length),
            arrived_at=time.time(),
        )
        if len(request.body) < length:
            owner.record_torn(request)
            self.close_connection = True
            return
        owner.record(request)
        try:
            self._serve(owner, request)
        except OSError:
            # The client hung up (deadline, body cap, killed worker): nothing left to do.
            request.answer_failed = True
            self.close_connection = True
        request.answered_at = time.time()

    def _serve(self, owner: Receiver, request: Request) -> None:
        segment = request.path.split("?")[0].split("/")[1]
        streaming = {"hang": self._hang, "trickle": self._trickle, "reset": self._reset,
                     "huge": self._huge}.get(segment)  # fmt: skip
        if streaming is not None:
            streaming()
        elif segment in _CANNED:
            self._answer(_CANNED[segment](owner))
        elif (reply := owner.reply_to(request)) is not None:
            self._answer(reply)
        else:
            self._hang()

    def _answer(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()

    def _hang(self) -> None:
        self.server.owner.stopping.wait(MAX_HOLD_SECONDS)
        self.close_connection = True

    def _trickle(self) -> None:
        # One byte every half second never trips a per-read timeout.
        self.send_response(200)
        self.send_header("content-length", "1000000")
        self.end_headers()
        self.wfile.flush()
        give_up_at = time.monotonic() + MAX_HOLD_SECONDS
        while not self.server.owner.stopping.wait(0.5) and time.monotonic() < give_up_at:
            self.wfile.write(b"x")
            self.wfile.flush()
        self.close_connection = True

    def _reset(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        # SO_LINGER with a zero timeout makes close() send a RST instead of a FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _huge(self) -> None:
        self.send_response(200)
        self.send_header("content-length", str(HUGE_BODY_BYTES))
        self.end_headers()
        for _ in range(HUGE_BODY_BYTES // len(_CHUNK)):
            self.wfile.write(_CHUNK)
        self.close_connection = True


class Receiver:
    """A real HTTP server on 127.0.0.1; start() it, stop() it (also on failure).

    Args:
        tls_context: a server-side SSL context to speak HTTPS instead of HTTP.
    """

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.tls_context = tls_context
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._torn: list[Request] = []
        self._connections = 0
        self._scripts: dict[str, list[int]] = {}
        self._reply_headers: dict[str, dict[str, str]] = {}
        self._delays: dict[str, float] = {}
        self._responders: dict[str, Responder] = {}
        self._holds: dict[str, threading.Event] = {}
        self._held = 0
        self._gzip_bomb: bytes | None = None
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- where ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    # -- how it answers ------------------------------------------------------------------------

    def script(self, path: str, statuses: list[int]) -> None:
        """Answer the next requests to ``path`` with these statuses (the last one repeats)."""
        with self._lock:
            self._scripts[path] = list(statuses)

    def answer(self, path: str, status: int) -> None:
        """Answer requests to ``path`` with ``status`` from now on (200 unless set)."""
        self.script(path, [status])

    def reply_headers(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._reply_headers[path] = dict(headers)

    def delay(self, path: str, seconds: float) -> None:
        """Answer requests to ``path`` only after ``seconds`` (a slow endpoint)."""
        with self._lock:
            self._delays[path] = seconds

    def respond(self, path: str, responder: Responder) -> None:
        """Let ``responder`` build the answer to every request to ``path``."""
        with self._lock:
            self._responders[path] = responder

    def hold(self, path: str) -> None:
        """Keep every request to ``path`` that arrives from now on unanswered until released."""
        with self._lock:
            self._holds[path] = threading.Event()

    def release(self, path: str) -> None:
        """Answer the held requests to ``path``, and stop holding new ones."""
        with self._lock:
            gate = self._holds.pop(path, None)
        if gate is not None:
            gate.set()

    # -- what it saw ---------------------------------------------------------------------------

    def received(self, path: str | None = None) -> list[Request]:
        """The requests that arrived whole (to ``path``, if given), in order of arrival."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def count(self) -> int:
        with self._lock:
            return len(self._requests)

    def held(self) -> int:
        """How many requests are being held right now."""
        with self._lock:
            return self._held

    def unanswered(self, before: float | None = None) -> list[Request]:
        """Requests not answered yet (that arrived before ``before``, if given)."""
        with self._lock:
            return [
                r for r in self._requests
                if r.answered_at is None and (before is None or r.arrived_at <= before)
            ]  # fmt: skip

    def torn(self) -> list[Request]:
        """Requests cut off before their body was complete (the sender died while writing):
        never answered, and not counted as requests that arrived."""
        with self._lock:
            return list(self._torn)

    def connections(self) -> int:
        """TCP connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def gzip_bomb(self) -> bytes:
        with self._lock:
            if self._gzip_bomb is None:
                self._gzip_bomb = _gzip_of_zeros(HUGE_BODY_BYTES)
            return self._gzip_bomb

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            gates = list(self._holds.values())
            self._holds.clear()
        for gate in gates:
            gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- called by the handler -----------------------------------------------------------------

    def note_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def record_torn(self, request: Request) -> None:
        with self._lock:
            self._torn.append(request)

    def reply_to(self, request: Request) -> Reply | None:
        """The answer to an ordinary request, after its delay or hold (None: hang)."""
        path = request.path
        with self._lock:
            responder = self._responders.get(path)
            delay = self._delays.get(path, 0.0)
            gate = self._holds.get(path)
            if gate is not None:
                self._held += 1
        if gate is not None:
            gate.wait(MAX_HOLD_SECONDS)
            with self._lock:
                self._held -= 1
        elif delay and self.stopping.wait(delay):
            return None
        if responder is not None:
            return responder(request)
        status = self._next_status(path)
        if status == HANG:
            return None
        reply = _status_reply(status)
        with self._lock:
            extra = self._reply_headers.get(path, {})
        return Reply(reply.status, reply.body, {**reply.headers, **extra})

    def _next_status(self, path: str) -> int:
        with self._lock:
            script = self._scripts.get(path)
            if not script:
                return 200
            return script.pop(0) if len(script) > 1 else script[0]


class BlackHole:
    """Accepts connections on 127.0.0.1, reads whatever comes, never answers.

    It counts the connections open at once (from accept until the client hangs up, or dies:
    a killed worker's sockets are closed by its kernel), and the most there ever were, and
    records the ``webhook-id`` of each request it read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._peak = 0
        self._peak_at = 0.0
        self._connections = 0
        self._webhook_ids: list[str] = []
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}{path}"

    def open_now(self) -> int:
        """Connections open right now."""
        with self._lock:
            return self._open

    def peak(self) -> int:
        """The most connections that were ever open at once."""
        with self._lock:
            return self._peak

    def peak_at(self) -> float:
        """When (``time.time()``) the most connections were first open at once."""
        with self._lock:
            return self._peak_at

    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._connections

    def webhook_ids(self) -> list[str]:
        """The ``webhook-id`` of every request read in full headers so far."""
        with self._lock:
            return list(self._webhook_ids)

    def start(self) -> BlackHole:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._open += 1
                self._connections += 1
                if self._open > self._peak:
                    self._peak, self._peak_at = self._open, time.time()
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        data = b""
        give_up_at = time.monotonic() + MAX_HOLD_SECONDS
        try:
            conn.settimeout(0.2)
            while not self._closing.is_set() and time.monotonic() < give_up_at:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break  # the client hung up: its deadline passed, or it died
                data = (data + chunk)[:65536]
        finally:
            with self._lock:
                self._open -= 1
            conn.close()
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        for line in head.split("\r\n"):
            if line.startswith("webhook-id:"):
                with self._lock:
                    self._webhook_ids.append(line.split(":", 1)[1].strip())


def make_self_signed_cert(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """Create a self-signed certificate for `hostname` only (no IP SAN) with openssl.

    Returns:
        (certificate path, key path), both PEM.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
