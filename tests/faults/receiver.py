"""Receivers for fault tests: one that answers (200, or a status set per path; slowly if
asked; or held until released), and a black hole that never answers.

Unlike `tests.receiver.Receiver`, `FaultReceiver` records when each answer was written (or
tried: the client may be dead by then), so a test can prove that an answer came only after a
worker was killed, and it can hold requests open on purpose (`hold`/`release`) to keep a
worker busy at the moment a fault is injected. `BlackHole` accepts connections and never
answers, and counts how many connections are open at once: what an endpoint's in-flight cap
looks like from the receiver's side.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A held request is answered at the latest after this long, so a forgotten `release` cannot
# keep server threads alive past the test.
MAX_HOLD_SECONDS = 30.0


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Dozens of worker threads connect at once; the default backlog of 5 would refuse some.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Workers killed mid-request hang up on us: that is the point of these tests.
        pass


class FaultReceiver:
    """A real HTTP server on 127.0.0.1 that records every request it gets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._torn: list[Request] = []
        self._delays: dict[str, float] = {}
        self._statuses: dict[str, int] = {}
        self._holds: dict[str, threading.Event] = {}
        self._held = 0
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def delay(self, path: str, seconds: float) -> None:
        """Answer requests to ``path`` with a 200 after ``seconds`` (a slow endpoint)."""
        with self._lock:
            self._delays[path] = seconds

    def answer(self, path: str, status: int) -> None:
        """Answer requests to ``path`` with ``status`` from now on (200 unless set)."""
        with self._lock:
            self._statuses[path] = status

    def hold(self, path: str) -> None:
        """Keep every request to ``path`` that arrives from now on unanswered until released."""
        with self._lock:
            self._holds[path] = threading.Event()

    def release(self, path: str) -> None:
        """Answer the held requests to ``path`` (200), and stop holding new ones."""
        with self._lock:
            gate = self._holds.pop(path, None)
        if gate is not None:
            gate.set()

    def held(self) -> int:
        """How many requests are being held right now."""
        with self._lock:
            return self._held

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

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

    def count(self) -> int:
        with self._lock:
            return len(self._requests)

    def start(self) -> FaultReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        with self._lock:
            gates = list(self._holds.values())
            self._holds.clear()
        for gate in gates:
            gate.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                request = Request(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    arrived_at=time.time(),
                )
                if len(body) < length:
                    with receiver._lock:
                        receiver._torn.append(request)
                    self.close_connection = True
                    return
                with receiver._lock:
                    receiver._requests.append(request)
                    delay = receiver._delays.get(self.path, 0.0)
                    status = receiver._statuses.get(self.path, 200)
                    gate = receiver._holds.get(self.path)
                    if gate is not None:
                        receiver._held += 1
                if gate is not None:
                    gate.wait(MAX_HOLD_SECONDS)
                    with receiver._lock:
                        receiver._held -= 1
                elif delay:
                    receiver._closing.wait(delay)
                answer = b'{"ok": true}' if status < 300 else b'{"ok": false}'
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    self.wfile.flush()
                except OSError:
                    request.answer_failed = True
                    self.close_connection = True
                request.answered_at = time.time()

        return Handler


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
