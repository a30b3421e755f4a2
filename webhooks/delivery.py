"""One HTTP delivery attempt, with the SSRF guard and a true total deadline.

`HttpSender.send` POSTs one request and returns a `DeliveryOutcome`: a failed attempt is a
value the worker records and schedules from, never an exception. One `HttpSender` lives in
each worker process and is shared by all its threads (one keep-alive connection pool).

Two promises from the spec are kept here, below httpx, in the network backend that httpcore
uses to open connections:

* SSRF guard. The host is resolved once; if any address is blocked by
  `webhooks.addresses.blocked_reason` nothing is sent, and otherwise the socket connects to
  the very address that was checked. A second lookup (what `socket.create_connection` would
  do) could be answered differently by a hostile DNS server: DNS rebinding.
* Total deadline. httpx timeouts are per operation, so a body that trickles one byte per
  second never trips them. `send` stores the attempt's deadline in a context variable, and
  every socket operation of the attempt (DNS, connect, TLS handshake, each send and recv)
  is given at most the time that remains. DNS runs in a small thread pool because
  getaddrinfo has no timeout: at the deadline the lookup is abandoned, not waited for.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import ipaddress
import select
import socket
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

import httpcore
import httpx

from webhooks.addresses import IPNetwork, blocked_reason, literal_ip

__all__ = [
    "ERROR_KINDS",
    "MAX_RESPONSE_BODY_BYTES",
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
    "body_too_large",
    "other",
)
MAX_RESPONSE_BODY_BYTES = 64 * 1024
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


# The monotonic time at which the current attempt must end, set by `HttpSender.send`. A
# context variable is per thread (and per greenlet under gevent), so one pool of
# connections can serve many attempts at once, each with its own deadline; a keep-alive
# connection opened by one attempt obeys the deadline of whichever attempt uses it now.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "webhooks_delivery_deadline", default=None
)


class _AddressBlocked(httpcore.ConnectError):
    """The host resolved to an address the SSRF guard refuses."""


class _NameNotResolved(httpcore.ConnectError):
    """getaddrinfo failed for the host."""


class _TLSFailed(httpcore.ConnectError):
    """The TLS handshake failed (certificate, hostname, protocol)."""


def _remaining(timeout: float | None, on_expiry: type[httpcore.TimeoutException]) -> float | None:
    """The time this socket operation may take: its own timeout, clamped to the deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise on_expiry("the total deadline of the delivery attempt has passed")
    return left if timeout is None else min(timeout, left)


def _is_readable(sock: socket.socket) -> bool:
    """Whether recv would return at once: how the pool notices a dropped idle connection."""
    if sock.fileno() < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)  # pragma: no cover (Windows)
    return bool(readable)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every operation ends by the attempt's deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._sock.settimeout(_remaining(timeout, httpcore.ReadTimeout))
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"reading the response timed out: {exc}") from exc
        except OSError as exc:
            raise httpcore.ReadError(f"reading the response failed: {exc}") from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        try:
            # One send at a time, each given what remains, so a receiver that accepts the
            # request slowly cannot stretch the attempt past the deadline.
            while view:
                self._sock.settimeout(_remaining(timeout, httpcore.WriteTimeout))
                sent = self._sock.send(view)
                view = view[sent:]
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"sending the request timed out: {exc}") from exc
        except OSError as exc:
            raise httpcore.WriteError(f"sending the request failed: {exc}") from exc

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # httpcore passes the URL's hostname here, not the address we connected to, so the
        # certificate is verified against the name the customer registered.
        try:
            self._sock.settimeout(_remaining(timeout, httpcore.ConnectTimeout))
            tls_sock = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except TimeoutError as exc:
            self._sock.close()
            raise httpcore.ConnectTimeout(f"the TLS handshake timed out: {exc}") from exc
        except ssl.SSLError as exc:
            self._sock.close()
            raise _TLSFailed(f"the TLS handshake with {server_hostname} failed: {exc}") from exc
        except OSError as exc:
            self._sock.close()
            raise httpcore.ConnectError(f"the TLS handshake failed: {exc}") from exc
        except BaseException:
            self._sock.close()
            raise
        return _DeadlineStream(tls_sock)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            # httpcore only asks it for selected_alpn_protocol(), which SSLSocket has too.
            return self._sock
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _is_readable(self._sock)
        return None


_SockAddr = tuple[Any, ...]


class _GuardedBackend(httpcore.NetworkBackend):
    """Opens TCP connections only to checked addresses, within the attempt's deadline."""

    def __init__(
        self,
        allowed_networks: Sequence[IPNetwork],
        resolver: concurrent.futures.ThreadPoolExecutor,
    ) -> None:
        self._allowed = tuple(allowed_networks)
        self._resolver = resolver

    def _resolve(self, host: str, port: int) -> list[tuple[int, _SockAddr]]:
        try:
            # Literal addresses need no lookup and no thread.
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            future = self._resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            try:
                infos = future.result(timeout=_remaining(None, httpcore.ConnectTimeout))
            except TimeoutError as exc:
                # The lookup thread finishes on its own; nobody waits for it any more.
                future.cancel()
                raise httpcore.ConnectTimeout(
                    f"resolving {host} did not finish before the deadline"
                ) from exc
            except socket.gaierror as exc:
                raise _NameNotResolved(f"{host} could not be resolved: {exc.strerror}") from exc
            except OSError as exc:
                raise _NameNotResolved(f"{host} could not be resolved: {exc}") from exc
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        candidates = self._resolve(host, port)
        # Every address is checked before any is tried: a name that mixes public and
        # private addresses is refused outright rather than used in part.
        for _, sockaddr in candidates:
            address = ipaddress.ip_address(sockaddr[0])
            reason = blocked_reason(address, self._allowed)
            if reason is not None:
                if literal_ip(host) != address:
                    reason = f"{host} resolves to {address}, and {reason}"
                raise _AddressBlocked(
                    f"{reason}; nothing was sent. "
                    "WEBHOOKS_ALLOWED_NETWORKS opens ranges like this on purpose "
                    "(e.g. 127.0.0.0/8 in development)"
                )
        if not candidates:
            raise _NameNotResolved(f"{host} resolved to no address")

        last_error: OSError | None = None
        for family, sockaddr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(_remaining(timeout, httpcore.ConnectTimeout))
                if local_address is not None:
                    sock.bind((local_address, 0))
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # The checked address itself: never the name, which could resolve anew.
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return _DeadlineStream(sock)

        where = f"{host}:{port}"
        if isinstance(last_error, TimeoutError):
            raise httpcore.ConnectTimeout(f"connecting to {where} timed out") from last_error
        raise httpcore.ConnectError(f"could not connect to {where}: {last_error}") from last_error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are never delivered over Unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# httpcore's exceptions as httpx's, most specific first, so that callers of the client see
# the exceptions httpx documents. Our own subclasses stay reachable as __cause__.
_HTTPX_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


def _as_httpx_error(exc: Exception, request: httpx.Request) -> Exception:
    for core_type, httpx_type in _HTTPX_EXCEPTIONS:
        if isinstance(exc, core_type):
            return httpx_type(str(exc), request=request)
    return exc


class _ResponseBody(httpx.SyncByteStream):
    """httpcore's response stream, with its errors raised as httpx errors."""

    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            mapped = _as_httpx_error(exc, self._request)
            if mapped is exc:
                raise
            raise mapped from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _GuardedTransport(httpx.BaseTransport):
    """An httpcore connection pool on the guarded backend, as an httpx transport.

    httpx's HTTPTransport builds its pool in __init__ and offers no way to pass a network
    backend; replacing its private ``_pool`` would work but depends on a private name. This
    small transport uses only public httpx and httpcore interfaces instead.
    """

    def __init__(
        self,
        *,
        backend: httpcore.NetworkBackend,
        ssl_context: ssl.SSLContext,
        max_connections: int,
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            core_response = self._pool.handle_request(core_request)
        except Exception as exc:
            mapped = _as_httpx_error(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        assert isinstance(core_response.stream, Iterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseBody(core_response.stream, request),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _classify(exc: Exception) -> tuple[str, str]:
    """Turn what went wrong into an error kind and a message for the dashboard."""
    chain = list(_exception_chain(exc))

    def find(types: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
        return next((e for e in chain if isinstance(e, types)), None)

    if (found := find(_AddressBlocked)) is not None:
        return "blocked", str(found)
    if (found := find(_NameNotResolved)) is not None:
        return "dns", str(found)
    if find((httpx.TimeoutException, httpcore.TimeoutException, TimeoutError)) is not None:
        return "timeout", ""  # the caller words it: it knows the deadline and the progress
    if (found := find((_TLSFailed, ssl.SSLError, ssl.CertificateError))) is not None:
        return "tls", str(found)
    if (found := find((httpx.RemoteProtocolError, httpcore.RemoteProtocolError))) is not None:
        text = str(found)
        # h11 and httpcore report a peer that hung up as a protocol error; for the
        # operator it is a dropped connection, like a reset.
        if "disconnected" in text or "closed connection" in text:
            return "connect", f"the receiver closed the connection: {text}"
        return "other", f"the receiver's response is not valid HTTP/1.1: {text}"
    if (found := find((httpx.NetworkError, httpcore.NetworkError, OSError))) is not None:
        return "connect", str(found)
    return "other", f"{type(exc).__name__}: {exc}"


def _text(data: bytes | bytearray) -> str:
    # Postgres text cannot hold NUL, and the body may be anything at all.
    return bytes(data).decode("utf-8", errors="replace").replace("\x00", "")


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
        transport = _GuardedTransport(
            backend=_GuardedBackend(allowed_networks, self._resolver),
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
        )
        self._client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            # Proxy and netrc settings from the environment must not route around the guard.
            trust_env=False,
            # Per-operation limits; the total deadline is enforced in the network stream.
            timeout=httpx.Timeout(seconds),
        )

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
        token = _deadline.set(started + self._timeout.total_seconds())
        try:
            return self._attempt(url, headers, body, started)
        finally:
            _deadline.reset(token)

    def _attempt(
        self, url: str, headers: Mapping[str, str], body: bytes, started: float
    ) -> DeliveryOutcome:
        request_headers = httpx.Headers(dict(headers))
        # No compression: the raw bytes we count are the bytes we keep, so a small gzip
        # bomb cannot inflate in memory.
        request_headers["accept-encoding"] = "identity"
        status: int | None = None
        reason_phrase = ""
        response_headers: dict[str, str] = {}
        received = bytearray()
        try:
            with self._client.stream("POST", url, headers=request_headers, content=body) as resp:
                status = resp.status_code
                reason_phrase = resp.reason_phrase
                response_headers = {
                    key: value.replace("\x00", "") for key, value in resp.headers.items()
                }
                # Content-Length is not trusted (it may lie or be absent): the raw bytes
                # are counted, and past the cap the connection is dropped on close.
                for chunk in resp.iter_raw():
                    received += chunk[: MAX_RESPONSE_BODY_BYTES - len(received)]
                    if len(received) >= MAX_RESPONSE_BODY_BYTES:
                        break
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
        self._client.close()
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
