"""Webhook delivery for the Cloud API.

The API process calls `publish()` inside its own transaction; everything else (dispatcher,
workers, CLI) runs from the same package. See README.md for the picture.
"""

from __future__ import annotations

__version__ = "0.1.0"

from webhooks.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    EndpointDeleted,
    EndpointNotFound,
    EventNotFound,
    InvalidArgument,
    InvalidEndpointURL,
    InvalidEventType,
    InvalidPayload,
    PayloadTooLarge,
    WebhookError,
)
from webhooks.outbox import publish
from webhooks.settings import Settings

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "EndpointDeleted",
    "EndpointNotFound",
    "EventNotFound",
    "InvalidArgument",
    "InvalidEndpointURL",
    "InvalidEventType",
    "InvalidPayload",
    "PayloadTooLarge",
    "Settings",
    "WebhookError",
    "__version__",
    "publish",
]
