"""The domain's values as the library hands them out: endpoints, deliveries, attempts.

They are plain frozen dataclasses built from rows; `to_json()` gives the shapes SPEC fixes for
the CLI's ``--json`` output (for operators); `customer_error_message` is an attempt's error
as the faces customers see (the HTTP API, the portal) must show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from webhooks.addresses import literal_ip

DELIVERY_STATES = ("pending", "delivering", "succeeded", "failed", "cancelled")


def rfc3339(moment: datetime | None) -> str | None:
    """Format a UTC time as RFC 3339 with ``Z`` (milliseconds kept when there are any)."""
    if moment is None:
        return None
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Endpoint:
    """A customer's receiving URL and what it subscribes to. Secrets are never held here.

    ``deleted_at`` is set once the endpoint was deleted (soft: the row stays so that its
    attempts keep naming an endpoint that can be shown).
    """

    id: str
    project_id: str
    mode: str
    url: str
    event_types: tuple[str, ...]
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    rate_limit: float | None = None
    failing_since: datetime | None = None
    failing_reason: str | None = None
    description: str | None = None
    deleted_at: datetime | None = None

    @property
    def is_deleted(self) -> bool:
        """True once the endpoint was deleted: nothing more is sent to it."""
        return self.deleted_at is not None

    @property
    def health(self) -> str:
        """``healthy``, ``failing`` (see `webhooks.health`), ``disabled``, or ``deleted``."""
        if self.is_deleted:
            return "deleted"
        if not self.enabled:
            return "disabled"
        return "failing" if self.failing_since is not None else "healthy"

    def to_json(self) -> dict[str, Any]:
        """The `endpoint show --json` shape."""
        return {
            "id": self.id,
            "url": self.url,
            "project_id": self.project_id,
            "mode": self.mode,
            "event_types": list(self.event_types),
            # A deleted endpoint keeps its flag in the row (enable/disable refuse it), but
            # "enabled": true beside "health": "deleted" would say it still receives.
            "enabled": self.enabled and not self.is_deleted,
            "disabled_reason": self.disabled_reason,
            "health": self.health,
            "failing_since": rfc3339(self.failing_since),
            "failing_reason": self.failing_reason,
            "rate_limit": self.rate_limit,
            "description": self.description,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "deleted_at": rfc3339(self.deleted_at),
        }


@dataclass(frozen=True)
class Attempt:
    """One HTTP try, as stored (append-only)."""

    number: int
    trigger: str
    delivery_id: str
    endpoint_id: str
    mode: str
    started_at: datetime
    duration_ms: int
    request_url: str
    response_status: int | None
    error_kind: str | None
    error_message: str | None
    response_body: str | None
    # Read by the faces customers use (`webhooks.pages`); the CLI's shape does not show them.
    id: int | None = None
    event_id: str | None = None
    request_headers: dict[str, Any] | None = None
    response_headers: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The `attempts --json` element shape."""
        return {
            "number": self.number,
            "trigger": self.trigger,
            "endpoint_id": self.endpoint_id,
            "delivery_id": self.delivery_id,
            "mode": self.mode,
            "started_at": rfc3339(self.started_at),
            "duration_ms": self.duration_ms,
            "request_url": self.request_url,
            "response_status": self.response_status,
            "error_kind": self.error_kind,
            "error_message": self.error_message,
            "response_body": self.response_body,
        }


def customer_error_message(attempt: Attempt) -> str | None:
    """The error of an attempt as a customer may read it (the HTTP API, the portal).

    The stored message is written for operators, who see it in logs and the CLI. For a
    blocked attempt it names the internal address the endpoint's host resolved to
    (``hooks.example.com resolves to 10.0.3.7, …``) and the setting that would open our
    network to it: neither is the customer's business, and the address maps our network. The
    customer reads that the address is not publicly routable, and that nothing was sent.
    Every other error is the customer's to read as stored (it is about their receiver).

    Returns:
        None when the attempt has no error.
    """
    if attempt.error_kind != "blocked":
        return attempt.error_message
    parts = urlsplit(attempt.request_url)
    # `attempts.refuse_plain_http`: the URL's scheme is refused, no address is involved.
    if parts.scheme.lower() == "http" and (attempt.error_message or "").startswith("plain http"):
        return "plain http:// endpoints are not accepted, so nothing was sent; use an https:// URL"
    host = parts.hostname
    if not host:
        return "the endpoint's address is not publicly routable, so nothing was sent"
    if literal_ip(host) is not None:
        return f"{host} is not a publicly routable address, so nothing was sent"
    return f"{host} resolves to an address that is not publicly routable, so nothing was sent"


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one endpoint, with every attempt made so far."""

    id: str
    event_id: str
    endpoint_id: str
    mode: str
    state: str
    attempt_count: int
    next_attempt_at: datetime | None
    attempts: tuple[Attempt, ...]

    def to_json(self) -> dict[str, Any]:
        """The `event show --json` delivery shape."""
        return {
            "id": self.id,
            "endpoint_id": self.endpoint_id,
            "mode": self.mode,
            "state": self.state,
            "attempt_count": self.attempt_count,
            "next_attempt_at": rfc3339(self.next_attempt_at),
            "attempts": [a.to_json() for a in self.attempts],
        }


@dataclass(frozen=True)
class DeliverySummary:
    """One delivery as `webhooks deliveries` lists it: where it stands and how it last went."""

    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    project_id: str
    mode: str
    state: str
    attempt_count: int
    last_status: int | None
    last_error_kind: str | None
    last_error_message: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The `deliveries --json` element shape."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "endpoint_id": self.endpoint_id,
            "project_id": self.project_id,
            "mode": self.mode,
            "state": self.state,
            "attempt_count": self.attempt_count,
            "last_status": self.last_status,
            "last_error_kind": self.last_error_kind,
            "last_error_message": self.last_error_message,
            "next_attempt_at": rfc3339(self.next_attempt_at),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }
