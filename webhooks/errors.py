"""Every error the library raises on purpose.

A failed HTTP attempt is *not* an error: it is a `DeliveryOutcome` the worker records. The
errors below are for callers who asked for something that cannot be done; each message names
the id or value involved and says what to do.

    WebhookError
    ├── ConfigurationError        a setting in the environment is invalid
    ├── DatabaseUnavailable       Postgres cannot be reached or the schema is missing
    ├── InvalidEndpointURL        (ValueError) an endpoint URL is refused at creation
    ├── InvalidEventType          (ValueError) an event type or filter is malformed
    ├── InvalidPayload            (ValueError) event data cannot be sent as UTF-8 JSON
    │   └── PayloadTooLarge       the envelope is over 262,144 bytes
    ├── InvalidArgument           (ValueError) any other bad input (ids, times, flags)
    ├── EndpointNotFound          (LookupError)
    │   └── EndpointDeleted       it existed, and was deleted: nothing more can go to it
    ├── EventNotFound             (LookupError)
    ├── RecoveryNotFound          (LookupError)
    ├── ApiKeyNotFound            (LookupError) no API key has the given id
    ├── InvalidApiKey             a presented API key is unknown, expired or revoked
    ├── PortalSessionNotFound     (LookupError) no portal session has the given id
    └── InvalidPortalLink         a portal link or session is unknown, used, expired or revoked
"""

from __future__ import annotations


class WebhookError(Exception):
    """Base class of every error raised on purpose by `webhooks`."""


class ConfigurationError(WebhookError):
    """A setting read from the environment is invalid."""


class DatabaseUnavailable(WebhookError):
    """Postgres cannot be reached, or the webhooks schema has not been migrated."""


class InvalidEndpointURL(WebhookError, ValueError):
    """An endpoint URL was refused when the endpoint was created."""


class InvalidEventType(WebhookError, ValueError):
    """An event type or event-type filter is malformed."""


class InvalidPayload(WebhookError, ValueError):
    """Event data cannot be published (not a JSON object, not serialisable as UTF-8 JSON)."""


class PayloadTooLarge(InvalidPayload):
    """The event envelope, as it would be sent, is over the size limit."""


class InvalidArgument(WebhookError, ValueError):
    """Some other argument is malformed (an id, a time, a flag value)."""


class EndpointNotFound(WebhookError, LookupError):
    """No endpoint has the given id."""

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(
            f"endpoint {endpoint_id} does not exist; `webhooks endpoint list` shows the known ones"
        )
        self.endpoint_id = endpoint_id


class EndpointDeleted(EndpointNotFound):
    """The endpoint was deleted: it can still be shown, but not changed or sent to."""

    def __init__(self, endpoint_id: str) -> None:
        WebhookError.__init__(
            self,
            f"endpoint {endpoint_id} was deleted; nothing more is sent to it and it cannot be "
            f"changed (its attempts stay readable: `webhooks endpoint show {endpoint_id}`, "
            "`webhooks attempts EVT`); add a new endpoint instead",
        )
        self.endpoint_id = endpoint_id


class EventNotFound(WebhookError, LookupError):
    """No event has the given id."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id} does not exist; check the id (it starts with evt_)")
        self.event_id = event_id


class RecoveryNotFound(WebhookError, LookupError):
    """No recovery has the given id."""

    def __init__(self, recovery_id: str) -> None:
        super().__init__(
            f"recovery {recovery_id} does not exist; check the id (it starts with rec_), or it "
            "was pruned"
        )
        self.recovery_id = recovery_id


class ApiKeyNotFound(WebhookError, LookupError):
    """No API key has the given id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"API key {key_id} does not exist; `webhooks key list` shows the known ones"
        )
        self.key_id = key_id


class InvalidApiKey(WebhookError):
    """A presented API key is unknown, expired or revoked (``reason`` says which, for logs;
    callers of the API are told only that the key is not valid)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the API key is {reason}")
        self.reason = reason


class PortalSessionNotFound(WebhookError, LookupError):
    """No portal session has the given id (in the caller's project and mode)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"portal session {session_id} does not exist; check the id (it starts with ps_)"
        )
        self.session_id = session_id


class InvalidPortalLink(WebhookError):
    """A portal link or session cookie cannot be used: ``reason`` is ``unknown``, ``used``
    (a link works once), ``expired`` or ``revoked``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the portal link is {reason}")
        self.reason = reason
