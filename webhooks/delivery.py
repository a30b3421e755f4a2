"""One HTTP delivery attempt, with the SSRF guard and a true total deadline.

`HttpSender.send` POSTs one request and returns a `DeliveryOutcome`: a failed attempt is a
value the worker records and schedules from, never an exception. One `HttpSender` lives in
each worker process and is shared by all its threads (one keep-alive connection pool).

The two promises from the spec (connect only to checked public addresses; 10 s in total,
however slowly a response trickles) are kept in the network layer, in
`webhooks.guarded_transport`; `send` sets the attempt's deadline there. Here: redirects are
not followed, bodies are read raw (we ask for no compression) up to 64 KiB, headers are kept
up to 8 KiB (`bounded_headers`), and every failure becomes an error kind.

Requests go straight to httpcore's connection pool, the layer under `httpx.Client`: the
client's request and response models, auth, redirect and cookie machinery cost about half
of the CPU time of an attempt to a fast receiver (582 vs 242 µs measured), none of it used
here. httpx still parses the URL and decodes the response headers, exactly as before.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol

import httpcore
import httpx

from webhooks.addresses import IPNetwork
from webhooks.guarded_transport import (
    AddressBlocked,
    GuardedBackend,
    NameNotResolved,
    TLSFailed,
    attempt_deadline,
    guarded_pool,
)

__all__ = [
    "ERROR_KINDS",
    "MAX_RESPONSE_BODY_BYTES",
    "MAX_RESPONSE_HEADER_BYTES",
    "TRUNCATED_HEADERS_KEY",
    "DeliveryOutcome",
    "HttpSender",
]

ERROR_KINDS = (
    "timeout",
    "connect",
    "dns",
    "tls",
    "blocked",
    "redirect",
    "http_status",
    "other",
)
MAX_RESPONSE_BODY_BYTES = 64 * 1024
# What is kept of a response's headers (names and values, UTF-8), the marker included; the
# HTTP parser alone would let a receiver store about 100 KiB per attempt.
MAX_RESPONSE_HEADER_BYTES = 8 * 1024
# The key that marks cut headers: parentheses are not allowed in a header name, so no
# receiver can send it.
TRUNCATED_HEADERS_KEY = "(truncated)"
_TRUNCATED_VALUE_SUFFIX = " [truncated]"
_MARKER_RESERVE = 128
DEFAULT_TIMEOUT = timedelta(seconds=10)

# Longest Location header quoted in a redirect's error message.
_MAX_LOCATION_CHARS = 500


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one HTTP attempt produced: a status, an error kind, or both.

    A response that was cut short (deadline, reset) keeps the status it had; `error_kind` is
    None only for a 2xx received in full (or up to the 64 KiB that is kept) in time.
    """

    status: int | None
    error_kind: str | None
    error_message: str | None
    duration: timedelta
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str | None = None

    @property
    def is_success(self) -> bool:
        """True for a 2xx received in time, with no error."""
        return self.error_kind is None and self.status is not None and 200 <= self.status < 300

    @property
    def retry_after(self) -> str | None:
        """The raw ``Retry-After`` header value, if the receiver sent one."""
        return self.response_headers.get("retry-after")


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _classify(exc: Exception) -> tuple[str, str]:
    """Turn what went wrong into an error kind and a message for the dashboard.

    Only httpcore's exceptions, the guarded transport's and the OS's can occur: the request
    never goes through httpx's client, so httpx's own exception classes are not looked for.
    """
    chain = list(_exception_chain(exc))

    def find(types: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
        return next((e for e in chain if isinstance(e, types)), None)

    if (found := find(AddressBlocked)) is not None:
        return "blocked", str(found)
    if (found := find(NameNotResolved)) is not None:
        return "dns", str(found)
    if find((httpcore.TimeoutException, TimeoutError)) is not None:
        return "timeout", ""  # the caller words it: it knows the deadline and the progress
    if (found := find((TLSFailed, ssl.SSLError, ssl.CertificateError))) is not None:
        return "tls", str(found)
    if (found := find(httpcore.RemoteProtocolError)) is not None:
        text = str(found)
        # h11 and httpcore report a peer that hung up as a protocol error; for the
        # operator it is a dropped connection, like a reset.
        if "disconnected" in text or "closed connection" in text:
            return "connect", f"the receiver closed the connection: {text}"
        return "other", f"the receiver's response is not valid HTTP/1.1: {text}"
    if (found := find((httpcore.NetworkError, OSError))) is not None:
        return "connect", str(found)
    return "other", f"{type(exc).__name__}: {exc}"


def bounded_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The response headers to keep: in the order received, at most 8 KiB in all.

    The header that crosses the limit keeps the start of its value, ending in
    ``" [truncated]"``; those after it are dropped, and the `TRUNCATED_HEADERS_KEY` entry
    says how much was received. NUL characters are removed (Postgres text cannot hold them).
    """
    kept: dict[str, str] = {}
    budget = MAX_RESPONSE_HEADER_BYTES - _MARKER_RESERVE
    used = received = 0
    cut = False
    for key, raw_value in items:
        value = raw_value.replace("\x00", "")
        size = len(key.encode()) + len(value.encode())
        received += size
        if cut:
            continue
        if used + size <= budget:
            kept[key] = value
            used += size
            continue
        # Nothing after the header that crosses the limit is kept, even if it would fit.
        cut = True
        room = budget - used - len(key.encode())
        if room > 0:
            start = value.encode()[:room].decode("utf-8", errors="ignore")
            kept[key] = start + _TRUNCATED_VALUE_SUFFIX
            used += len(key.encode()) + len(start.encode())
    if cut:
        kept[TRUNCATED_HEADERS_KEY] = (
            f"{received} bytes of response headers received; only the first {used} are kept"
        )
    return kept


def _text(data: bytes | bytearray) -> str:
    # Postgres text cannot hold NUL, and the body may be anything at all.
    return bytes(data).decode("utf-8", errors="replace").replace("\x00", "")


class SenderClosed(RuntimeError):
    """`HttpSender.send` was called after `HttpSender.close`."""


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> tuple[httpcore.URL, bytes]:
    """The parsed URL and its Host header (endpoint URLs repeat: parse each once)."""
    parsed = httpx.URL(url)
    core_url = httpcore.URL(
        scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
    )
    return core_url, parsed.netloc


def _seconds(duration: timedelta) -> str:
    return f"{duration.total_seconds():g}s"


class HttpSender:
    """Sends webhook requests: one instance per worker process, safe to share across threads.

    Args:
        timeout: the total time one attempt may take, from DNS to the last body byte.
        allowed_networks: networks the SSRF guard lets through (``WEBHOOKS_ALLOWED_NETWORKS``).
        max_connections: size of the keep-alive connection pool (and of the DNS threads).
        ssl_context: the TLS trust to use; the default verifies with certifi's CA bundle.
            Tests and private CAs pass their own.
    """

    def __init__(
        self,
        *,
        timeout: timedelta = DEFAULT_TIMEOUT,
        allowed_networks: Sequence[IPNetwork] = (),
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if timeout <= timedelta(0):
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._timeout = timeout
        seconds = timeout.total_seconds()
        # Threads are started lazily, so a large maximum costs nothing until lookups are
        # slow; then each in-flight attempt has its own lookup thread and none waits.
        self._resolver = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, max_connections), thread_name_prefix="webhooks-dns"
        )
        self._pool = guarded_pool(
            backend=GuardedBackend(allowed_networks, self._resolver),
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
        )
        self._closed = False
        # Per-operation limits; the total deadline is enforced in the network stream.
        self._extensions = {
            "timeout": {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}
        }

    def send(self, url: str, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        """POST `body` to `url` once and describe what happened.

        Never raises for network or HTTP problems: they are returned as an outcome with an
        `error_kind`. The whole attempt ends within the timeout given at construction.

        Args:
            url: the endpoint URL (already validated at endpoint creation).
            headers: the request headers (content-type, signature, ...).
            body: the exact bytes to send.
        """
        started = time.monotonic()
        token = attempt_deadline.set(started + self._timeout.total_seconds())
        try:
            return self._attempt(url, headers, body, started)
        finally:
            attempt_deadline.reset(token)

    def _attempt(
        self, url: str, headers: Mapping[str, str], body: bytes, started: float
    ) -> DeliveryOutcome:
        status: int | None = None
        reason_phrase = ""
        response_headers: dict[str, str] = {}
        received = bytearray()
        try:
            if self._closed:
                raise SenderClosed("the HTTP sender is closed (the worker is shutting down)")
            target, host = _target(url)
            request = httpcore.Request(
                b"POST",
                target,
                headers=self._headers(host, headers, len(body)),
                content=body,
                extensions=self._extensions,
            )
            response = self._pool.handle_request(request)
            try:
                status = response.status
                reason_phrase = _reason_phrase(response)
                response_headers = bounded_headers(httpx.Headers(response.headers).items())
                # Content-Length is not trusted (it may lie or be absent): the raw bytes
                # are counted, and past the cap the connection is dropped on close.
                assert isinstance(response.stream, Iterable)
                for chunk in response.stream:
                    received += chunk[: MAX_RESPONSE_BODY_BYTES - len(received)]
                    if len(received) >= MAX_RESPONSE_BODY_BYTES:
                        break
            finally:
                response.close()
        except Exception as exc:
            kind, message = _classify(exc)
            if kind == "timeout":
                message = self._timeout_message(status, len(received))
            return DeliveryOutcome(
                status=status,
                error_kind=kind,
                error_message=message,
                duration=timedelta(seconds=time.monotonic() - started),
                response_headers=response_headers,
                response_body=None if status is None else _text(received),
            )
        duration = timedelta(seconds=time.monotonic() - started)
        assert status is not None
        verdict, explanation = _judge_status(status, reason_phrase, response_headers)
        return DeliveryOutcome(
            status=status,
            error_kind=verdict,
            error_message=explanation,
            duration=duration,
            response_headers=response_headers,
            response_body=_text(received),
        )

    @staticmethod
    def _headers(host: bytes, headers: Mapping[str, str], length: int) -> list[tuple[bytes, bytes]]:
        # What httpx.Client sent before us, less compression: the raw bytes we count are
        # the bytes we keep, so a small gzip bomb cannot inflate in memory.
        return [
            (b"host", host),
            (b"accept", b"*/*"),
            (b"accept-encoding", b"identity"),
            (b"connection", b"keep-alive"),
            (b"content-length", str(length).encode("ascii")),
            *((key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()),
        ]

    def _timeout_message(self, status: int | None, received: int) -> str:
        limit = _seconds(self._timeout)
        if status is None:
            return (
                f"no response within {limit}, the total time allowed for DNS, connect, TLS, "
                "sending the request and receiving the response"
            )
        return (
            f"the response (status {status}) was still arriving when the {limit} total "
            f"deadline passed; {received} body bytes had been received"
        )

    def close(self) -> None:
        """Close pooled connections and stop the DNS threads."""
        self._closed = True
        self._pool.close()
        self._resolver.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> HttpSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Sender(Protocol):
    """What makes an attempt's request: `HttpSender`, `ShardedSender`, or a test's."""

    def send(self, url: str, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        """Send one request and say what came of it."""
        ...


class ShardedSender:
    """Several `HttpSender` pools, each thread always sending through the same one.

    httpcore's pool looks at every one of its connections on each request and each
    response close, under one lock. A batch's attempts run at once and open as many
    connections: in one pool of a few hundred, that bookkeeping was a quarter of a worker's
    time holding the GIL (py-spy, a backlog drain). Shards keep each look short, and a
    thread keeps reusing the keep-alive connections of its own shard.

    Args:
        shards: how many pools.
        **options: each pool's `HttpSender` arguments (``max_connections`` is per pool).
    """

    def __init__(self, shards: int, **options: Any) -> None:
        self._senders = [HttpSender(**options) for _ in range(max(1, shards))]
        self._local = threading.local()
        self._turns = itertools.count()

    def send(self, url: str, headers: Mapping[str, str], body: bytes) -> DeliveryOutcome:
        """Send through this thread's pool."""
        index: int | None = getattr(self._local, "index", None)
        if index is None:
            index = self._local.index = next(self._turns) % len(self._senders)
        return self._senders[index].send(url, headers, body)

    def close(self) -> None:
        """Close every pool."""
        for sender in self._senders:
            sender.close()


def _reason_phrase(response: httpcore.Response) -> str:
    """The reason phrase as httpx reports it: the server's, else the standard one."""
    phrase = response.extensions.get("reason_phrase")
    if phrase is None:
        return httpx.codes.get_reason_phrase(response.status)
    return bytes(phrase).decode("ascii", errors="ignore")


def _judge_status(
    status: int, reason_phrase: str, headers: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The error kind and message for a response received in full (or to the cap)."""
    if 200 <= status < 300:
        return None, None
    answered = f"the receiver answered {status} {reason_phrase}".rstrip()
    if 300 <= status < 400:
        location = headers.get("location", "")[:_MAX_LOCATION_CHARS] or "(no Location header)"
        return "redirect", (
            f"{answered}, redirecting to {location}; redirects are not followed, so point "
            "the endpoint at the final URL"
        )
    return "http_status", answered
