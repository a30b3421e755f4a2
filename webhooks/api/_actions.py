"""What a customer may do to their endpoints, one function each, shared by the two faces
customers use: the HTTP API's routes and the portal's forms call these, so an endpoint
created, changed or tested from either is created, changed or tested the same way.

Each takes an open transaction and objects already found in the caller's world (a key's or a
portal session's project and mode); the faces check who is asking first.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection

from webhooks.endpoints import (
    add_endpoint,
    disable_endpoint,
    enable_endpoint,
    update_endpoint,
)
from webhooks.models import Endpoint
from webhooks.outbox import PublishResult, publish_event
from webhooks.pages import Scope
from webhooks.settings import Settings

TEST_EVENT_TYPE = "webhook.test"


def create_endpoint(
    conn: Connection,
    settings: Settings,
    world: Scope,
    *,
    url: str,
    event_types: Sequence[str] = (),
    description: str | None = None,
) -> tuple[Endpoint, str]:
    """Add an endpoint to ``world``; return it with its secret (to be shown once)."""
    endpoint, secret = add_endpoint(
        conn,
        settings,
        url=url,
        project_id=world.project_id,
        event_types=tuple(event_types),
        mode=world.mode,
    )
    if description:
        endpoint = update_endpoint(conn, settings, endpoint.id, description=description)
    return endpoint, secret


def set_enabled(
    conn: Connection, settings: Settings, endpoint: Endpoint, enabled: bool, *, reason: str
) -> Endpoint:
    """Enable or disable an endpoint (``reason``: why, when disabling); a no-op when it is
    already so."""
    if enabled and not endpoint.enabled:
        return enable_endpoint(conn, settings, endpoint.id)
    if not enabled and endpoint.enabled:
        return disable_endpoint(conn, settings, endpoint.id, reason=reason)
    return endpoint


def send_test_event(conn: Connection, settings: Settings, endpoint: Endpoint) -> PublishResult:
    """Publish one ``webhook.test`` event, in the endpoint's mode, to that endpoint only."""
    return publish_event(
        conn,
        settings,
        project_id=endpoint.project_id,
        type=TEST_EVENT_TYPE,
        data={"endpoint_id": endpoint.id, "message": "a test event, sent on request"},
        mode=endpoint.mode,
        only_endpoint=endpoint.id,
    )
