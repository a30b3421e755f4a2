"""The short reason a failing endpoint shows: pure, no services."""

from __future__ import annotations

import pytest

from webhooks.health import failure_reason


@pytest.mark.parametrize(
    ("status", "kind", "message", "reason"),
    [
        (401, "http_status", "HTTP 401", "HTTP 401"),
        (503, "http_status", None, "HTTP 503"),
        (None, "timeout", "no response within 10s", "timeout"),
        (301, "redirect", "redirects are not followed", "redirect (HTTP 301)"),
        (None, "dns", "[Errno -2] Name or service not known", "DNS: no such host"),
        (None, "dns", "temporary failure in name resolution", "DNS: lookup failed"),
        (
            None,
            "tls",
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate has expired",
            "TLS: certificate expired",
        ),
        (
            None,
            "tls",
            "Hostname mismatch, certificate is not valid for 'x'",
            "TLS: certificate does not match the host",
        ),
        (None, "tls", "wrong version number", "TLS: handshake failed"),
        (None, "connect", "[Errno 111] Connection refused", "connection refused"),
        (
            None,
            "connect",
            "the receiver closed the connection: EOF",
            "connection closed by the receiver",
        ),
        (
            None,
            "blocked",
            "localhost resolves to 127.0.0.1",
            "blocked: not a publicly routable address",
        ),
        (200, "other", "could not be interpreted", "HTTP 200"),
    ],
)
def test_reasons_are_short_and_name_no_internal_address(
    status: int | None, kind: str, message: str | None, reason: str
) -> None:
    assert failure_reason(status, kind, message) == reason
