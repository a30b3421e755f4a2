"""A real HTTP receiver on 127.0.0.1 for the tests, scripted per path.

``receiver.script("/a", [500, 500, 200])`` answers the first requests to ``/a`` with those
statuses (the last one repeats); ``HANG`` in a script means "never answer" for that request;
``receiver.reply_headers("/a", {"retry-after": "120"})`` adds headers to its answers;
``receiver.delay("/a", 2.0)`` answers ``/a`` only after that many seconds. Special paths:
``/hang`` never answers, ``/trickle`` sends a 200 header then one byte every half second,
``/redirect`` answers 302 to ``/redirected``. Every request is recorded with its headers,
body and arrival time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float


HANG = -1


class Receiver:
    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._scripts: dict[str, list[int]] = {}
        self._reply_headers: dict[str, dict[str, str]] = {}
        self._delays: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, statuses: list[int]) -> None:
        with self._lock:
            self._scripts[path] = list(statuses)

    def reply_headers(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._reply_headers[path] = dict(headers)

    def delay(self, path: str, seconds: float) -> None:
        with self._lock:
            self._delays[path] = seconds

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def _next_status(self, path: str) -> int:
        with self._lock:
            script = self._scripts.get(path)
            if not script:
                return 200
            return script.pop(0) if len(script) > 1 else script[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        ReceivedRequest(self.path, dict(self.headers.items()), body, time.time())
                    )
                special: dict[str, Callable[[], None]] = {
                    "/hang": self._hang,
                    "/trickle": self._trickle,
                    "/redirect": self._redirect,
                }
                base = "/" + self.path.split("/")[1]
                if base in special:
                    special[base]()
                else:
                    with receiver._lock:
                        delay = receiver._delays.get(self.path, 0.0)
                    if delay and receiver._closing.wait(delay):
                        return
                    status = receiver._next_status(self.path)
                    if status == HANG:
                        self._hang()
                    else:
                        with receiver._lock:
                            extra = receiver._reply_headers.get(self.path)
                        self._answer(status, extra)

            def _answer(self, status: int, extra: dict[str, str] | None = None) -> None:
                body = b'{"ok": true}' if status < 300 else b"nope"
                self.send_response(status)
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _hang(self) -> None:
                receiver._closing.wait(30)

            def _trickle(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "1000")
                self.end_headers()
                for _ in range(60):
                    if receiver._closing.wait(0.5):
                        return
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:
                        return

            def _redirect(self) -> None:
                self._answer(302, {"location": receiver.url("/redirected")})

        return Handler
