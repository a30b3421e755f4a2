"""One HTTP attempt against real, misbehaving receivers: outcomes, deadline, SSRF guard, TLS.

Every test talks to a `Receiver` on 127.0.0.1 in this process. Deadline tests use a
2 s timeout and check that the cut comes within [timeout, timeout + 0.5 s]; the slow test
uses the real default of 10 s.
"""

from __future__ import annotations

import ipaddress
import resource
import shutil
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.polling import wait_for
from tests.support.receivers import Receiver, make_self_signed_cert
from webhooks.delivery import (
    ERROR_KINDS,
    MAX_RESPONSE_BODY_BYTES,
    DeliveryOutcome,
    HttpSender,
)

TIMEOUT = timedelta(seconds=2)
OVERSHOOT = 0.5
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
HEADERS = {"content-type": "application/json", "webhook-id": "evt_test"}
BODY = b'{"id":"evt_test"}'


@pytest.fixture
def server() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def sender() -> Iterator[HttpSender]:
    with HttpSender(timeout=TIMEOUT, allowed_networks=LOOPBACK) as http:
        yield http


@pytest.fixture
def guarded_sender() -> Iterator[HttpSender]:
    """A sender with the production policy: nothing private is allowed."""
    with HttpSender(timeout=TIMEOUT) as http:
        yield http


def timed(send: Callable[[], DeliveryOutcome]) -> tuple[DeliveryOutcome, float]:
    started = time.monotonic()
    outcome = send()
    return outcome, time.monotonic() - started


def assert_cut_at_deadline(outcome: DeliveryOutcome, elapsed: float, timeout: timedelta) -> None:
    limit = timeout.total_seconds()
    assert outcome.error_kind == "timeout", outcome
    assert limit <= outcome.duration.total_seconds() < limit + OVERSHOOT
    assert limit <= elapsed < limit + OVERSHOOT


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Answer getaddrinfo for made-up names; a value is a list of IPs, an exception, or a
    callable. Numeric and other lookups go to the real resolver."""
    answers: dict[str, Any] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        flags = kwargs.get("flags", args[3] if len(args) > 3 else 0)
        if host not in answers or flags & socket.AI_NUMERICHOST:
            return real(host, port, *args, **kwargs)
        answer = answers[host]
        if callable(answer):
            answer = answer()
        if isinstance(answer, BaseException):
            raise answer
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            if ":" not in ip
            else (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
            for ip in answer
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_a_2xx_is_a_success_with_its_body_and_headers(server: Receiver, sender: HttpSender) -> None:
    outcome = sender.send(server.url("/ok"), HEADERS, BODY)

    assert outcome.is_success
    assert (outcome.status, outcome.error_kind, outcome.error_message) == (200, None, None)
    assert outcome.response_body == '{"ok": true}'
    assert outcome.response_headers["content-type"] == "application/json"
    assert timedelta(0) < outcome.duration < timedelta(seconds=1)
    [seen] = server.received("/ok")
    assert seen.body == BODY
    assert seen.headers["webhook-id"] == "evt_test"
    assert seen.headers["accept-encoding"] == "identity"


def test_a_500_is_an_http_status_failure(server: Receiver, sender: HttpSender) -> None:
    outcome = sender.send(server.url("/error"), HEADERS, BODY)

    assert not outcome.is_success
    assert (outcome.status, outcome.error_kind) == (500, "http_status")
    assert outcome.error_message == "the receiver answered 500 Internal Server Error"
    assert outcome.response_body == "boom"


def test_a_429_keeps_its_retry_after_header(server: Receiver, sender: HttpSender) -> None:
    outcome = sender.send(server.url("/throttle"), HEADERS, BODY)

    assert (outcome.status, outcome.error_kind) == (429, "http_status")
    assert outcome.retry_after == "120"


def test_a_redirect_is_recorded_and_not_followed(server: Receiver, sender: HttpSender) -> None:
    outcome = sender.send(server.url("/redirect"), HEADERS, BODY)

    assert (outcome.status, outcome.error_kind) == (301, "redirect")
    assert outcome.error_message is not None
    assert "/redirected" in outcome.error_message
    assert server.received("/redirected") == []


def test_nul_bytes_and_invalid_utf8_in_a_body_are_made_storable(
    server: Receiver, sender: HttpSender
) -> None:
    outcome = sender.send(server.url("/nul"), HEADERS, BODY)

    assert outcome.is_success
    assert outcome.response_body == "ab\ufffd"


def test_keep_alive_connections_are_reused_between_attempts(
    server: Receiver, sender: HttpSender
) -> None:
    for _ in range(3):
        assert sender.send(server.url("/ok"), HEADERS, BODY).is_success

    assert server.connections() == 1


def test_a_receiver_that_never_answers_is_cut_at_the_deadline(
    server: Receiver, sender: HttpSender
) -> None:
    outcome, elapsed = timed(lambda: sender.send(server.url("/hang"), HEADERS, BODY))

    assert_cut_at_deadline(outcome, elapsed, TIMEOUT)
    assert outcome.status is None
    assert outcome.error_message is not None
    assert "2s" in outcome.error_message


def test_slow_drip_response_is_cut_at_the_deadline(server: Receiver, sender: HttpSender) -> None:
    # One byte every half second never trips a per-read timeout: only a total deadline cuts it.
    outcome, elapsed = timed(lambda: sender.send(server.url("/trickle"), HEADERS, BODY))

    assert_cut_at_deadline(outcome, elapsed, TIMEOUT)
    assert outcome.status == 200
    assert not outcome.is_success
    assert outcome.response_body is not None
    assert 2 <= len(outcome.response_body) <= 5
    assert set(outcome.response_body) == {"x"}


def test_a_reset_in_the_middle_of_the_response_is_a_connect_failure(
    server: Receiver, sender: HttpSender
) -> None:
    outcome = sender.send(server.url("/reset"), HEADERS, BODY)

    assert outcome.status == 200
    assert outcome.error_kind == "connect"
    assert not outcome.is_success


def test_a_refused_connection_is_a_connect_failure(sender: HttpSender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    outcome = sender.send(f"http://127.0.0.1:{port}/", HEADERS, BODY)

    assert (outcome.status, outcome.error_kind) == (None, "connect")
    assert outcome.error_message is not None
    assert "refused" in outcome.error_message.lower()


def test_a_huge_2xx_body_is_a_success_and_only_64_kib_is_kept(
    server: Receiver, sender: HttpSender
) -> None:
    max_rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        outcome = sender.send(server.url("/huge"), HEADERS, BODY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    max_rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max_rss_before

    assert outcome.is_success
    assert outcome.response_body == "a" * MAX_RESPONSE_BODY_BYTES
    # 50 MB were on offer; reading them would show here (ru_maxrss is in KiB on Linux).
    assert peak < 4 * 1024 * 1024
    assert max_rss_growth < 20 * 1024


def test_a_compressed_body_is_not_inflated(server: Receiver, sender: HttpSender) -> None:
    tracemalloc.start()
    try:
        outcome = sender.send(server.url("/gzip"), HEADERS, BODY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcome.is_success
    assert outcome.response_headers["content-encoding"] == "gzip"
    # Kept as the compressed bytes that arrived (about 50 KB), never the 50 MB they inflate to.
    assert len(server.gzip_bomb) < MAX_RESPONSE_BODY_BYTES
    assert outcome.response_body == server.gzip_bomb.decode("utf-8", "replace").replace("\x00", "")
    # The gzip member inflates to 50 MB of zeros; decompressing would allocate that.
    assert peak < 4 * 1024 * 1024
    assert server.received("/gzip")[0].headers["accept-encoding"] == "identity"


def test_oversized_response_headers_are_an_other_failure(
    server: Receiver, sender: HttpSender
) -> None:
    outcome = sender.send(server.url("/big-headers"), HEADERS, BODY)

    assert (outcome.status, outcome.error_kind) == (None, "other")
    assert outcome.error_message is not None
    assert "not valid HTTP" in outcome.error_message


def test_localhost_is_blocked_and_the_receiver_sees_nothing(
    server: Receiver, guarded_sender: HttpSender
) -> None:
    outcome = guarded_sender.send(server.url("/ok", host="localhost"), HEADERS, BODY)

    assert (outcome.status, outcome.error_kind) == (None, "blocked")
    assert outcome.error_message is not None
    assert "localhost resolves to 127.0.0.1" in outcome.error_message
    assert "loopback" in outcome.error_message
    assert "WEBHOOKS_ALLOWED_NETWORKS" in outcome.error_message
    assert server.connections() == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "127.1"])
def test_literal_loopback_addresses_are_blocked(
    server: Receiver, guarded_sender: HttpSender, host: str
) -> None:
    outcome = guarded_sender.send(f"http://{host}:{server.port}/ok", HEADERS, BODY)

    assert outcome.error_kind == "blocked", outcome
    assert server.connections() == 0


def test_localhost_is_allowed_when_its_network_is_allowlisted(
    server: Receiver,
) -> None:
    resolved = {
        ipaddress.ip_address(info[4][0])
        for info in socket.getaddrinfo("localhost", server.port, type=socket.SOCK_STREAM)
    }
    # Where localhost also resolves to ::1, that address must be allowed too: a name with
    # any blocked address is refused outright.
    allowed = LOOPBACK + (
        (ipaddress.ip_network("::1/128"),) if any(ip.version == 6 for ip in resolved) else ()
    )
    with HttpSender(timeout=TIMEOUT, allowed_networks=allowed) as http:
        outcome = http.send(server.url("/ok", host="localhost"), HEADERS, BODY)

    assert outcome.is_success, outcome
    assert len(server.received("/ok")) == 1


def test_a_name_with_one_private_address_among_public_ones_is_refused(
    guarded_sender: HttpSender, fake_dns: dict[str, Any]
) -> None:
    fake_dns["mixed.example"] = ["93.184.216.34", "10.0.0.7"]

    outcome = guarded_sender.send("http://mixed.example/", HEADERS, BODY)

    assert outcome.error_kind == "blocked"
    assert outcome.error_message is not None
    assert "10.0.0.7" in outcome.error_message


def test_the_checked_address_is_the_one_connected_to(
    server: Receiver, sender: HttpSender, fake_dns: dict[str, Any]
) -> None:
    # DNS rebinding: the first answer passes the check, a later one would not. Only one
    # lookup may happen, and the connection must go to its answer.
    lookups: list[str] = []

    def rebinding() -> list[str]:
        lookups.append("lookup")
        return ["127.0.0.1"] if len(lookups) == 1 else ["169.254.169.254"]

    fake_dns["rebind.example"] = rebinding

    outcome = sender.send(server.url("/ok", host="rebind.example"), HEADERS, BODY)

    assert outcome.is_success, outcome
    assert lookups == ["lookup"]
    assert len(server.received("/ok")) == 1


def test_a_name_that_does_not_resolve_is_a_dns_failure(
    guarded_sender: HttpSender, fake_dns: dict[str, Any]
) -> None:
    fake_dns["nowhere.example"] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    outcome = guarded_sender.send("https://nowhere.example/hook", HEADERS, BODY)

    assert (outcome.status, outcome.error_kind) == (None, "dns")
    assert outcome.error_message is not None
    assert "nowhere.example" in outcome.error_message


def test_a_dns_lookup_that_never_returns_is_abandoned_at_the_deadline(
    guarded_sender: HttpSender, fake_dns: dict[str, Any]
) -> None:
    release = threading.Event()

    def stuck() -> list[str]:
        release.wait(30)
        return ["93.184.216.34"]

    fake_dns["stuck.example"] = stuck
    try:
        outcome, elapsed = timed(
            lambda: guarded_sender.send("https://stuck.example/", HEADERS, BODY)
        )
    finally:
        release.set()

    assert_cut_at_deadline(outcome, elapsed, TIMEOUT)


def test_proxy_environment_variables_do_not_route_around_the_guard(
    server: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy on loopback that would happily forward to anything.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, server.url("/"))
    with HttpSender(timeout=TIMEOUT) as http:
        outcome = http.send("http://10.0.0.1/", HEADERS, BODY)

    assert outcome.error_kind == "blocked"
    assert server.connections() == 0


def test_attempts_in_many_threads_keep_their_own_deadlines(
    server: Receiver, sender: HttpSender
) -> None:
    paths = ["/hang", "/ok", "/trickle", "/ok", "/error"] * 4
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        results = list(
            pool.map(lambda p: timed(lambda: sender.send(server.url(p), HEADERS, BODY)), paths)
        )

    for path, (outcome, elapsed) in zip(paths, results, strict=True):
        if path in ("/hang", "/trickle"):
            assert_cut_at_deadline(outcome, elapsed, TIMEOUT)
        else:
            assert outcome.error_kind in (None, "http_status")
            assert elapsed < 1.5


def test_every_error_kind_reported_is_a_known_one(server: Receiver, sender: HttpSender) -> None:
    for path in ("/ok", "/error", "/redirect", "/reset", "/big-headers"):
        kind = sender.send(server.url(path), HEADERS, BODY).error_kind
        assert kind is None or kind in ERROR_KINDS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"), hostname="localhost")


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    receiver = Receiver(tls_context=context).start()
    yield receiver
    receiver.stop()


def test_an_untrusted_certificate_is_a_tls_failure(tls_server: Receiver) -> None:
    with HttpSender(timeout=TIMEOUT, allowed_networks=LOOPBACK) as http:
        outcome = http.send(tls_server.url("/ok", host="localhost"), HEADERS, BODY)

    assert (outcome.status, outcome.error_kind) == (None, "tls")
    assert outcome.error_message is not None
    assert "certificate verify failed" in outcome.error_message
    assert tls_server.received() == []


def test_tls_verifies_the_hostname_not_the_address_connected_to(
    tls_server: Receiver, certificate: tuple[Path, Path]
) -> None:
    # The certificate names localhost only. Connecting to the checked IP must still present
    # and verify "localhost"; an URL naming the IP must fail verification.
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    with HttpSender(timeout=TIMEOUT, allowed_networks=LOOPBACK, ssl_context=trust) as http:
        by_name = http.send(tls_server.url("/ok", host="localhost"), HEADERS, BODY)
        by_address = http.send(tls_server.url("/ok", host="127.0.0.1"), HEADERS, BODY)

    assert by_name.is_success, by_name
    assert by_address.error_kind == "tls", by_address
    assert by_address.error_message is not None
    assert "127.0.0.1" in by_address.error_message
    assert len(tls_server.received("/ok")) == 1


def test_a_closed_sender_still_reports_instead_of_raising(server: Receiver) -> None:
    http = HttpSender(timeout=TIMEOUT, allowed_networks=LOOPBACK)
    http.close()

    outcome = http.send(server.url("/ok"), HEADERS, BODY)

    assert outcome.error_kind == "other"


@pytest.mark.slow
def test_the_default_deadline_is_ten_seconds_for_hangs_and_slow_drips(
    server: Receiver,
) -> None:
    default = timedelta(seconds=10)
    with HttpSender(allowed_networks=LOOPBACK) as http, ThreadPoolExecutor(2) as pool:
        hang = pool.submit(timed, lambda: http.send(server.url("/hang"), HEADERS, BODY))
        trickle = pool.submit(timed, lambda: http.send(server.url("/trickle"), HEADERS, BODY))
        wait_for(lambda: hang.done() and trickle.done(), timeout=15, what="both attempts")

    assert_cut_at_deadline(*hang.result(), default)
    assert_cut_at_deadline(*trickle.result(), default)
    assert trickle.result()[0].status == 200
