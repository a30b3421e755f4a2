"""Domain values as the API's JSON objects (the shapes `_schemas` documents).

What a receiver controls (status, headers, body) is copied as data. An attempt's error is
shown as `models.customer_error_message` has it: never our internal addresses.
"""

from __future__ import annotations

from typing import Any

from webhooks.models import (
    Attempt,
    Delivery,
    DeliverySummary,
    Endpoint,
    customer_error_message,
    rfc3339,
)
from webhooks.recovery import Recovery

# A summary carries no URL to name the host by; a blocked attempt's stored message names an
# internal address, so it is replaced as `customer_error_message` would.
BLOCKED_SUMMARY = "the endpoint's address is not publicly routable, so nothing was sent"


def endpoint_object(endpoint: Endpoint, *, secret: str | None = None) -> dict[str, Any]:
    """A ``webhook_endpoint``; ``secret`` only from the answers that create or rotate it."""
    body = {"object": "webhook_endpoint", **endpoint.to_json()}
    if secret is not None:
        body["secret"] = secret
    return body


def attempt_id(attempt: Attempt) -> str:
    """The public id of an attempt (``att_…``)."""
    return f"att_{attempt.id}"


def attempt_object(attempt: Attempt, *, full: bool = False) -> dict[str, Any]:
    """A ``webhook_attempt``; ``full`` adds the request's and the response's headers."""
    body: dict[str, Any] = {
        "id": attempt_id(attempt),
        "object": "webhook_attempt",
        "event_id": attempt.event_id,
        "delivery_id": attempt.delivery_id,
        "endpoint_id": attempt.endpoint_id,
        "mode": attempt.mode,
        "number": attempt.number,
        "trigger": attempt.trigger,
        # Not via `Attempt.to_json`: a page formats 100 attempts, and that formats every field.
        "started_at": rfc3339(attempt.started_at),
        "duration_ms": attempt.duration_ms,
        "request_url": attempt.request_url,
        "response_status": attempt.response_status,
        "error_kind": attempt.error_kind,
        "error_message": customer_error_message(attempt),
        "response_body": attempt.response_body,
    }
    if full:
        body["request_headers"] = attempt.request_headers
        body["response_headers"] = attempt.response_headers
    return body


def delivery_object(summary: DeliverySummary) -> dict[str, Any]:
    """A ``webhook_delivery``."""
    body = {"object": "webhook_delivery", **summary.to_json()}
    if summary.last_error_kind == "blocked":
        body["last_error_message"] = BLOCKED_SUMMARY
    return body


def event_object(
    envelope: dict[str, Any],
    deliveries: list[Delivery] | None = None,
    summaries: dict[str, DeliverySummary] | None = None,
) -> dict[str, Any]:
    """An ``event``; with ``deliveries``, each with its attempts."""
    body = {"object": "event", **envelope}
    body.setdefault("mode", "live")
    if deliveries is not None:
        summaries = summaries or {}
        body["deliveries"] = [
            {
                **delivery_object(summaries[d.id]),
                "attempts": [attempt_object(a) for a in d.attempts],
            }
            for d in deliveries
            if d.id in summaries
        ]
    return body


def recovery_object(recovery: Recovery) -> dict[str, Any]:
    """A ``webhook_recovery``."""
    return {"object": "webhook_recovery", **recovery.to_json()}


def page_body(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    """The list shape: ``{"data", "next_cursor", "has_more"}``."""
    return {"data": items, "next_cursor": next_cursor, "has_more": next_cursor is not None}
