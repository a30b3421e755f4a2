"""The transport under every delivery: the SSRF guard and the total deadline, in httpcore.

httpcore opens connections through a *network backend*; ours (`GuardedBackend`) is where
both promises of `webhooks.delivery` are kept:

* SSRF guard. The host is resolved once; if any address is blocked by
  `webhooks.addresses.blocked_reason` nothing is sent, and otherwise the socket connects to
  the very address that was checked. A second lookup (what `socket.create_connection` would
  do) could be answered differently by a hostile DNS server: DNS rebinding.
* Total deadline. httpcore timeouts are per operation, so a body that trickles one byte
  per second never trips them. `attempt_deadline` holds the current attempt's deadline, and
  every socket operation (DNS, connect, TLS handshake, each send and recv) is given at most
  the time that remains. DNS runs in a small thread pool because getaddrinfo has no
  timeout: at the deadline the lookup is abandoned, not waited for.

`guarded_pool` builds the `httpcore.ConnectionPool` on that backend that `HttpSender` sends
through, using only public names of httpcore.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import ipaddress
import select
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore

from webhooks.addresses import IPNetwork, blocked_reason, literal_ip

# The monotonic time at which the current attempt must end, set by `HttpSender.send`. A
# context variable is per thread (and per greenlet under gevent), so one pool of
# connections can serve many attempts at once, each with its own deadline; a keep-alive
# connection opened by one attempt obeys the deadline of whichever attempt uses it now.
attempt_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "webhooks_attempt_deadline", default=None
)


class AddressBlocked(httpcore.ConnectError):
    """The host resolved to an address the SSRF guard refuses."""


class NameNotResolved(httpcore.ConnectError):
    """getaddrinfo failed for the host."""


class TLSFailed(httpcore.ConnectError):
    """The TLS handshake failed (certificate, hostname, protocol)."""


def _remaining(timeout: float | None, on_expiry: type[httpcore.TimeoutException]) -> float | None:
    """The time this socket operation may take: its own timeout, clamped to the deadline."""
    deadline = attempt_deadline.get()
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
            raise TLSFailed(f"the TLS handshake with {server_hostname} failed: {exc}") from exc
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


class GuardedBackend(httpcore.NetworkBackend):
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
                raise NameNotResolved(f"{host} could not be resolved: {exc.strerror}") from exc
            except OSError as exc:
                raise NameNotResolved(f"{host} could not be resolved: {exc}") from exc
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
                raise AddressBlocked(
                    f"{reason}; nothing was sent. "
                    "WEBHOOKS_ALLOWED_NETWORKS opens ranges like this on purpose "
                    "(e.g. 127.0.0.0/8 in development)"
                )
        if not candidates:
            raise NameNotResolved(f"{host} resolved to no address")

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


def guarded_pool(
    *,
    backend: httpcore.NetworkBackend,
    ssl_context: ssl.SSLContext,
    max_connections: int,
) -> httpcore.ConnectionPool:
    """A keep-alive HTTP/1.1 connection pool that connects only through ``backend``."""
    return httpcore.ConnectionPool(
        ssl_context=ssl_context,
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=5.0,
        http1=True,
        http2=False,
        network_backend=backend,
    )
