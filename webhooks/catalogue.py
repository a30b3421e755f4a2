"""The event catalogue: every event type we know is emitted, with a description and an example.

The Cloud API emits events about its resources (projects, deployments and their rollbacks,
API keys); the webhook service itself emits operational events under the reserved project
``_webhooks`` (see `webhooks.health`) and two of its own for testing a receiver
(``webhook.test``, ``webhook.check``). The Logs API only reads (query, live tail), so logs
emit no events.

Each example ``data`` object has the shape of the object in the API's docs (ids such as
``proj_8f3a2b`` and ``dep_19af``, RFC 3339 times with ``Z``), so a receiver written against
the examples works against the real events. `webhooks event-types` lists the catalogue and
`webhooks trigger` sends an example (`example_data`).

The catalogue is advice, not a gate: the API may add a type before we do, so an unknown type
in an endpoint's filter is warned about (`unknown_filter_warnings`), never refused, and
`publish()` accepts any well-formed type.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhooks.errors import InvalidEventType

__all__ = [
    "CATALOGUE",
    "EventType",
    "closest_type",
    "example_data",
    "find_event_type",
    "unknown_filter_warnings",
]

# difflib's similarity ratio below which a suggestion would be a guess, not a correction.
_SUGGESTION_CUTOFF = 0.6


@dataclass(frozen=True)
class EventType:
    """One entry of the catalogue."""

    type: str
    description: str
    example: Mapping[str, Any]

    def example_data(self) -> dict[str, Any]:
        """A fresh copy of the example ``data`` object, safe for the caller to change."""
        return copy.deepcopy(dict(self.example))

    def to_json(self) -> dict[str, Any]:
        """The `event-types --json` shape of one entry."""
        return {
            "type": self.type,
            "description": self.description,
            "example": self.example_data(),
        }


_PROJECT = {
    "id": "proj_8f3a2b",
    "name": "acme-prod",
    "region": "us-east-1",
    "created_at": "2026-04-28T14:02:11Z",
    "status": "active",
}
_DEPLOYMENT = {
    "id": "dep_19af",
    "project_id": "proj_8f3a2b",
    "commit": "a1b2c3d",
    "created_at": "2026-04-28T14:05:40Z",
}
_API_KEY = {
    "id": "key_4c2e91",
    "project_id": "proj_8f3a2b",
    "mode": "live",
    "scope": "write",
    "created_at": "2026-04-28T14:10:03Z",
}
_DELIVERY = {
    "delivery_id": "dlv_01jt3m2q8z5e7g9j2m4p6r8t0v",
    "event_id": "evt_01jt3m2q7x4d8f6h9k2n5p8r1s",
    "endpoint_id": "ep_01jt2zk9wa7r3m5q8x1c4v6b9n",
}

CATALOGUE: tuple[EventType, ...] = (
    EventType(
        "project.created",
        "A project was created.",
        _PROJECT,
    ),
    EventType(
        "project.updated",
        "A project's metadata (name, region, status) changed.",
        {**_PROJECT, "name": "acme-production", "previous": {"name": "acme-prod"}},
    ),
    EventType(
        "project.deleted",
        "A project was permanently deleted, with its deployments and keys.",
        {**_PROJECT, "status": "deleted", "deleted_at": "2026-05-02T09:30:00Z"},
    ),
    EventType(
        "deployment.created",
        "A deployment was created from a commit and is starting.",
        {**_DEPLOYMENT, "status": "pending"},
    ),
    EventType(
        "deployment.succeeded",
        "A deployment finished and its release is live.",
        {**_DEPLOYMENT, "status": "succeeded", "finished_at": "2026-04-28T14:07:12Z"},
    ),
    EventType(
        "deployment.failed",
        "A deployment stopped before going live; the previous release keeps serving.",
        {
            **_DEPLOYMENT,
            "status": "failed",
            "finished_at": "2026-04-28T14:06:58Z",
            "error": {"code": "build_failed", "message": "npm run build exited with code 1"},
        },
    ),
    EventType(
        "deployment.rolled_back",
        "A deployment was rolled back to the previous release.",
        {
            **_DEPLOYMENT,
            "status": "rolled_back",
            "rolled_back_to": "dep_17c2",
            "rolled_back_at": "2026-04-28T15:20:31Z",
        },
    ),
    EventType(
        "api_key.created",
        "An API key was created (the key itself is never in the event).",
        _API_KEY,
    ),
    EventType(
        "api_key.rotated",
        "An API key was rotated; the old key stays valid until grace_expires_at.",
        {**_API_KEY, "replaced_by": "key_9d07b3", "grace_expires_at": "2026-04-29T14:10:03Z"},
    ),
    EventType(
        "api_key.revoked",
        "An API key was revoked and no longer authenticates.",
        {**_API_KEY, "revoked_at": "2026-05-01T08:00:00Z"},
    ),
    EventType(
        "endpoint.failing",
        "Operational (project _webhooks): an endpoint's last 5 attempts failed, or one exhausted.",
        {
            "endpoint_id": "ep_01jt2zk9wa7r3m5q8x1c4v6b9n",
            "project_id": "proj_8f3a2b",
            "url": "https://hooks.example.com/cloud",
            "reason": "HTTP 500",
            "failing_since": "2026-04-28T14:10:00Z",
            "disable_at": "2026-05-03T14:10:00Z",
        },
    ),
    EventType(
        "endpoint.disabled",
        "Operational (project _webhooks): an endpoint was disabled; nothing is sent to it.",
        {
            "endpoint_id": "ep_01jt2zk9wa7r3m5q8x1c4v6b9n",
            "project_id": "proj_8f3a2b",
            "url": "https://hooks.example.com/cloud",
            "reason": "every delivery has been failing since 2026-04-23T14:10:00Z",
        },
    ),
    EventType(
        "endpoint.recovered",
        "Operational (project _webhooks): a failing endpoint accepted a delivery again.",
        {
            "endpoint_id": "ep_01jt2zk9wa7r3m5q8x1c4v6b9n",
            "project_id": "proj_8f3a2b",
            "url": "https://hooks.example.com/cloud",
            "failing_since": "2026-04-28T14:10:00Z",
            "recovered_at": "2026-04-28T16:02:41Z",
        },
    ),
    EventType(
        "delivery.exhausted",
        "Operational (project _webhooks): a delivery failed for 72 hours and is given up.",
        {**_DELIVERY, "attempts": 11, "last_status": 503, "last_error_kind": "http_status"},
    ),
    EventType(
        "webhook.test",
        "A test event sent on request to one endpoint, to see that it receives events.",
        {"endpoint_id": "ep_01jt2zk9wa7r3m5q8x1c4v6b9n", "message": "This is a test event."},
    ),
    EventType(
        "webhook.check",
        "A probe of `webhooks endpoint check`; it is never stored or retried.",
        {"endpoint_id": "ep_01jt2zk9wa7r3m5q8x1c4v6b9n", "probe": "valid"},
    ),
)

_BY_TYPE = {entry.type: entry for entry in CATALOGUE}


def find_event_type(event_type: str) -> EventType | None:
    """The catalogue's entry for ``event_type``, or None when it is not in the catalogue."""
    return _BY_TYPE.get(event_type)


def closest_type(event_type: str) -> str | None:
    """The known type most like ``event_type`` (a likely typo's correction), if any is close."""
    found = difflib.get_close_matches(event_type, list(_BY_TYPE), n=1, cutoff=_SUGGESTION_CUTOFF)
    return found[0] if found else None


def example_data(event_type: str) -> dict[str, Any]:
    """A fresh copy of the example ``data`` of a known type, for simulated events.

    Raises:
        InvalidEventType: the type is not in the catalogue; the message names the closest
            known type and says to pass the data explicitly.
    """
    entry = find_event_type(event_type)
    if entry is None:
        raise InvalidEventType(
            f"{event_type!r} is not in the event catalogue, so there is no example data for it"
            f"{_did_you_mean(closest_type(event_type))}; pass --data to send it anyway "
            "(`webhooks event-types` lists the known types)"
        )
    return entry.example_data()


def unknown_filter_warnings(filters: Iterable[str]) -> list[str]:
    """One warning for each filter that matches no known type, naming the closest known one.

    An exact type is unknown when the catalogue does not have it; a ``prefix.*`` filter
    when no known type starts with ``prefix.`` (``deployment.*`` is known, ``deploymnet.*``
    is not). The filters are assumed valid (`webhooks.event_types.validate_filters`).
    """
    warnings: list[str] = []
    for item in filters:
        if item.endswith(".*"):
            prefix = item[:-1]
            if any(known.startswith(prefix) for known in _BY_TYPE):
                continue
            suggestion = _closest_prefix(prefix)
            warnings.append(
                f"{item} matches no known event type{_did_you_mean(suggestion)}; "
                "the endpoint subscribes to it anyway"
            )
        elif item not in _BY_TYPE:
            warnings.append(
                f"{item} is not a known event type{_did_you_mean(closest_type(item))}; "
                "the endpoint subscribes to it anyway"
            )
    return warnings


def _closest_prefix(prefix: str) -> str | None:
    # Every "a.", "a.b." that starts a known type is a prefix a filter could mean.
    prefixes = {
        ".".join(parts[:i]) + "."
        for parts in (known.split(".") for known in _BY_TYPE)
        for i in range(1, len(parts))
    }
    found = difflib.get_close_matches(prefix, sorted(prefixes), n=1, cutoff=_SUGGESTION_CUTOFF)
    return found[0] + "*" if found else None


def _did_you_mean(suggestion: str | None) -> str:
    return f" (did you mean {suggestion}?)" if suggestion else ""
