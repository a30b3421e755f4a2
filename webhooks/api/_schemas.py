"""The API's objects and request bodies as typed models: they validate what callers send and
document every field, with an example, in the OpenAPI document (`/v1/openapi.json`).

Answers are rendered by `_render` to these shapes; the models describe them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["live", "test"]
EP = "ep_01jf3m8q2x7k9v4t6n1c5h0bze"
EVT = "evt_01jf3m9a0r4w8c2y6p1k3s5d7f"
DLV = "dlv_6f1c0e3a9b2d4c8e8f7a6b5c4d3e2f1a"
AT = "2026-04-28T14:02:11Z"


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


class ErrorDetail(BaseModel):
    """What went wrong."""

    type: Literal[
        "invalid_request",
        "authentication",
        "permission",
        "not_found",
        "rate_limited",
        "conflict",
        "server",
    ]
    message: str = Field(description="What went wrong and how to fix it.")
    param: str | None = Field(description="The parameter at fault, if one is.")


class ErrorBody(BaseModel):
    """Every error answer."""

    model_config = _example(
        {"error": {"type": "not_found", "message": f"no webhook_endpoint {EP} …", "param": "id"}}
    )
    error: ErrorDetail


ENDPOINT_EXAMPLE: dict[str, Any] = {
    "id": EP,
    "object": "webhook_endpoint",
    "url": "https://hooks.example.com/cloudapi",
    "project_id": "proj_8f3a2b",
    "mode": "live",
    "event_types": ["deployment.*"],
    "enabled": True,
    "disabled_reason": None,
    "health": "healthy",
    "failing_since": None,
    "failing_reason": None,
    "rate_limit": None,
    "description": "Deploy notifications",
    "created_at": AT,
    "updated_at": AT,
    "deleted_at": None,
}


class WebhookEndpoint(BaseModel):
    """An HTTPS URL that receives the project's events of one mode."""

    model_config = _example(ENDPOINT_EXAMPLE)
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    project_id: str
    mode: Mode
    event_types: list[str] = Field(description="Exact types and prefix.* filters; [] = all.")
    enabled: bool
    disabled_reason: str | None
    health: Literal["healthy", "failing", "disabled", "deleted"]
    failing_since: str | None
    failing_reason: str | None
    rate_limit: float | None = Field(description="Requests per second at most, or null.")
    description: str | None
    created_at: str
    updated_at: str
    deleted_at: str | None
    deleted: bool | None = Field(default=None, description="true in the answer to DELETE.")


class WebhookEndpointWithSecret(WebhookEndpoint):
    """An endpoint with its signing secret: only in the answers that create or rotate it."""

    model_config = _example({**ENDPOINT_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZI"})
    secret: str = Field(description="whsec_…, Standard Webhooks format. Shown only here.")


class EndpointCreate(BaseModel):
    """A new endpoint, in the key's project and mode."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://hooks.example.com/cloudapi", "event_types": ["deployment.*"]}
            ]
        },
    )
    url: str = Field(max_length=2048, description="https:// URL to POST events to.")
    event_types: list[str] = Field(default=[], max_length=100)
    description: str | None = Field(default=None, max_length=1000)


class EndpointUpdate(BaseModel):
    """What to change; fields left out stay as they are."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"url": "https://hooks.example.com/v2", "enabled": True}]},
    )
    url: str | None = Field(default=None, max_length=2048)
    event_types: list[str] | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    enabled: bool | None = None


class RecoverRequest(BaseModel):
    """What to send again to this endpoint, as `webhooks recover --endpoint` selects it."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"since": "2h", "state": "failed"}]}
    )
    since: str = Field(description="Events created from this time: RFC 3339 or an age (2h).")
    until: str | None = Field(default=None, description="…until this time (default: now).")
    state: Literal["failed", "all"] = Field(default="failed")
    type: str | None = Field(default=None, description="Only this type (exact or prefix.*).")
    include_unrouted: bool = Field(
        default=False, description="Also events this endpoint never had a delivery for."
    )


class WebhookRecovery(BaseModel):
    """A bulk replay, carried out in the background; its counts come from real attempts."""

    model_config = _example(
        {
            "id": "rec_01jf3mb7d1v0m2z8x4q6w9e3rt",
            "object": "webhook_recovery",
            "state": "running",
            "total": 12,
            "queued": 12,
            "sent": 5,
            "succeeded": 4,
            "failed": 1,
            "held": 0,
            "project_id": "proj_8f3a2b",
            "mode": "live",
            "endpoint_id": EP,
            "created_at": AT,
            "finished_at": None,
        }
    )
    id: str
    object: Literal["webhook_recovery"]
    state: Literal["running", "done", "cancelled"]
    total: int
    queued: int
    sent: int
    succeeded: int
    failed: int
    held: int = Field(description="Queued, not sendable now (endpoint disabled, breaker open).")
    project_id: str
    mode: Mode
    endpoint_id: str | None
    created_at: str
    finished_at: str | None


ATTEMPT_EXAMPLE: dict[str, Any] = {
    "id": "att_1042",
    "object": "webhook_attempt",
    "event_id": EVT,
    "delivery_id": DLV,
    "endpoint_id": EP,
    "mode": "live",
    "number": 1,
    "trigger": "scheduled",
    "started_at": AT,
    "duration_ms": 182,
    "request_url": "https://hooks.example.com/cloudapi",
    "response_status": 500,
    "error_kind": "http_status",
    "error_message": "HTTP 500",
    "response_body": "upstream unavailable",
}


class WebhookAttempt(BaseModel):
    """One HTTP try. Whatever the receiver sent back is returned as data, never interpreted."""

    model_config = _example(ATTEMPT_EXAMPLE)
    id: str
    object: Literal["webhook_attempt"]
    event_id: str
    delivery_id: str
    endpoint_id: str
    mode: Mode
    number: int
    trigger: Literal["scheduled", "replay"]
    started_at: str
    duration_ms: int
    request_url: str
    response_status: int | None
    error_kind: str | None = Field(
        description="timeout, connect, dns, tls, blocked, redirect, http_status or other."
    )
    error_message: str | None
    response_body: str | None = Field(description="As received, cut at 64 KiB.")


class WebhookAttemptFull(WebhookAttempt):
    """One attempt in full: the request's and the response's headers too."""

    model_config = _example(
        {
            **ATTEMPT_EXAMPLE,
            "request_headers": {"webhook-id": EVT, "content-type": "application/json"},
            "response_headers": {"content-type": "text/plain"},
        }
    )
    request_headers: dict[str, str] | None
    response_headers: dict[str, str] | None


DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": DLV,
    "object": "webhook_delivery",
    "event_id": EVT,
    "event_type": "deployment.succeeded",
    "endpoint_id": EP,
    "project_id": "proj_8f3a2b",
    "mode": "live",
    "state": "pending",
    "attempt_count": 1,
    "last_status": 500,
    "last_error_kind": "http_status",
    "last_error_message": "HTTP 500",
    "next_attempt_at": "2026-04-28T14:03:11Z",
    "created_at": AT,
    "updated_at": AT,
}


class WebhookDelivery(BaseModel):
    """One event on its way to one endpoint."""

    model_config = _example(DELIVERY_EXAMPLE)
    id: str
    object: Literal["webhook_delivery"]
    event_id: str
    event_type: str
    endpoint_id: str
    project_id: str
    mode: Mode
    state: Literal["pending", "delivering", "succeeded", "failed", "cancelled"]
    attempt_count: int
    last_status: int | None
    last_error_kind: str | None
    last_error_message: str | None
    next_attempt_at: str | None
    created_at: str
    updated_at: str


class WebhookDeliveryWithAttempts(WebhookDelivery):
    """A delivery with every attempt it made."""

    attempts: list[WebhookAttempt]


EVENT_EXAMPLE: dict[str, Any] = {
    "id": EVT,
    "object": "event",
    "type": "deployment.succeeded",
    "created_at": AT,
    "project_id": "proj_8f3a2b",
    "mode": "live",
    "data": {"deployment_id": "dep_19af", "commit": "a1b2c3d"},
}


class Event(BaseModel):
    """An event as it is sent (the envelope)."""

    model_config = _example(EVENT_EXAMPLE)
    id: str
    object: Literal["event"]
    type: str
    created_at: str
    project_id: str
    mode: Mode
    data: dict[str, Any]


class EventWithDeliveries(Event):
    """An event and its deliveries, each with its attempts."""

    deliveries: list[WebhookDeliveryWithAttempts]


class EventCreate(BaseModel):
    """An event to publish in the key's project and mode."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"type": "deployment.succeeded", "data": {"deployment_id": "dep_19af"}}]
        },
    )
    type: str = Field(max_length=200, description="Dot-separated words.")
    data: dict[str, Any] = Field(description="A JSON object; the envelope is at most 256 KiB.")


class SimulateRequest(BaseModel):
    """A simulated test event, as `webhooks trigger` sends it."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"type": "deployment.failed"}]}
    )
    type: str = Field(max_length=200)
    data: dict[str, Any] | None = Field(
        default=None, description="Default: the event catalogue's example for the type."
    )
    endpoint_id: str | None = Field(
        default=None, description="Only to this test endpoint, whatever its filter."
    )


class ReplayRequest(BaseModel):
    """Which deliveries of the event to send again (default: all)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"endpoint_id": EP}]})
    endpoint_id: str | None = None


class Queued(BaseModel):
    """How many deliveries a replay queued."""

    model_config = _example({"queued": 1})
    queued: int


class EndpointList(BaseModel):
    """A page of endpoints, newest first."""

    data: list[WebhookEndpoint]
    next_cursor: str | None = Field(description="Pass as cursor for the next page.")
    has_more: bool


class EventList(BaseModel):
    """A page of events, newest first."""

    data: list[Event]
    next_cursor: str | None = Field(description="Pass as cursor for the next page.")
    has_more: bool


class DeliveryList(BaseModel):
    """A page of deliveries, newest first."""

    data: list[WebhookDelivery]
    next_cursor: str | None = Field(description="Pass as cursor for the next page.")
    has_more: bool


class AttemptList(BaseModel):
    """A page of attempts, newest first."""

    data: list[WebhookAttempt]
    next_cursor: str | None = Field(description="Pass as cursor for the next page.")
    has_more: bool


class RecoveryList(BaseModel):
    """A page of recoveries, newest first."""

    data: list[WebhookRecovery]
    next_cursor: str | None = Field(description="Pass as cursor for the next page.")
    has_more: bool
