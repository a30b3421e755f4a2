"""Misbehaving HTTP receivers on 127.0.0.1, for the tests of one delivery attempt.

`BehaviourServer` runs a threaded HTTP/1.1 server in the test process; the path chooses the
behaviour (see `_Handler.do_POST`): well-behaved answers, hangs, slow drips, resets, huge or
compressed bodies, oversized or merely many headers, terminal escapes, redirects. It records
every request and counts every TCP connection, so a test can assert that the SSRF guard sent
nothing at all.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HUGE_BODY_BYTES = 50 * 1024 * 1024
ESCAPES_BODY = "\x1b[2J\x1b[31mred\x9b31m\x07bell\r\nnext\x7f"
_CHUNK = b"a" * (64 * 1024)


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: bytes


def _gzip_of_zeros(size: int) -> bytes:
    """A gzip member inflating to `size` zero bytes, built without holding `size` bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    parts.append(compressor.flush())
    return b"".join(parts)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: BehaviourServer

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        self.owner.note_connection()
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up on purpose (deadline, body cap) are the point of these tests.
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

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        owner.record(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        path = self.path.split("?")[0]
        try:
            getattr(self, "_" + path.strip("/").replace("-", "_"), self._ok)()
        except OSError:
            # The client hung up (deadline, body cap): nothing left to do.
            self.close_connection = True

    def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _ok(self) -> None:
        self._answer(200, b"ok", content_type="text/plain")

    def _error(self) -> None:
        self._answer(500, b"boom")

    def _throttle(self) -> None:
        self._answer(429, b"slow down", retry_after="120")

    def _redirect(self) -> None:
        self._answer(301, location="/target")

    def _target(self) -> None:
        self._answer(200, b"redirect target")

    def _nul(self) -> None:
        self._answer(200, b"a\x00b\xff")

    def _hang(self) -> None:
        # Never answer; let go only when the server stops.
        self.server.owner.stopping.wait()
        self.close_connection = True

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "1000000")
        self.end_headers()
        self.wfile.flush()
        while not self.server.owner.stopping.wait(0.5):
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

    def _gzip(self) -> None:
        self._answer(
            200,
            self.server.owner.gzip_bomb,
            content_encoding="gzip",
            content_type="text/plain",
        )

    def _many_headers(self) -> None:
        # 75 KB of headers: under the HTTP parser's limit, far over what is kept.
        self.send_response(200)
        for i in range(30):
            self.send_header(f"x-filler-{i}", "f" * 2500)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def _escapes(self) -> None:
        # Clear the screen, colour, a C1 CSI, a bell, a line break: text, as UTF-8.
        self._answer(200, ESCAPES_BODY.encode("utf-8"), content_type="text/plain")

    def _big_headers(self) -> None:
        self.send_response(200)
        for i in range(40):
            self.send_header(f"x-filler-{i}", "f" * 4000)
        self.send_header("content-length", "0")
        self.end_headers()


class BehaviourServer:
    """A receiver whose path picks a behaviour; start() it, stop() it (also on failure).

    Args:
        tls_context: a server-side SSL context to speak HTTPS instead of HTTP.
    """

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.tls_context = tls_context
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._connections = 0
        self._gzip_bomb: bytes | None = None
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def gzip_bomb(self) -> bytes:
        with self._lock:
            if self._gzip_bomb is None:
                self._gzip_bomb = _gzip_of_zeros(HUGE_BODY_BYTES)
            return self._gzip_bomb

    def start(self) -> BehaviourServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def note_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def seen(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path is None or s.path == path]


def make_self_signed_cert(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """Create a self-signed certificate for `hostname` only (no IP SAN) with openssl.

    Returns:
        (certificate path, key path), both PEM.
    """
    import subprocess

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
