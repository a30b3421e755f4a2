"""``POST /v1/webhook_portal_sessions`` and ``DELETE /v1/webhook_portal_sessions/{id}``
(SPEC, *Portal*): a write key asks for a single-use link to the portal of its project and
mode, and can revoke it.

The answer carries the link's token, so it is not kept for ``Idempotency-Key`` (which would
store it): asking twice makes two links, each usable once, which is harmless.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from webhooks import clock
from webhooks.api._errors import not_found
from webhooks.api._handling import domain_errors, identity_of, require_write, respond, state_of
from webhooks.api._routes import ERRORS, reject_unknown_parameters
from webhooks.database import translate_errors
from webhooks.models import rfc3339
from webhooks.portal_sessions import (
    PortalSession,
    create_portal_session,
    find_portal_session,
    revoke_portal_session,
)

# Where the link leads, under the API's own root (`webhooks.portal`).
ENTER_PATH = "/portal/enter/"
PS = "ps_01jf3m8q2x7k9v4t6n1c5h0bze"


class PortalSessionObject(BaseModel):
    """A portal session; ``url`` only in the answer that creates it."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": PS,
                    "object": "webhook_portal_session",
                    "url": "https://hooks.example.com/portal/enter/pl_4mQ…",
                    "project_id": "proj_8f3a2b",
                    "mode": "live",
                    "created_at": "2026-04-28T14:02:11Z",
                    "expires_at": "2026-04-28T15:02:11Z",
                    "opened_at": None,
                    "revoked_at": None,
                }
            ]
        }
    }
    id: str
    object: Literal["webhook_portal_session"]
    url: str | None = Field(
        default=None,
        description="The single-use link: absolute when WEBHOOKS_PUBLIC_URL is set, else a "
        "path on this API's host. Only in the answer that creates the session.",
    )
    project_id: str
    mode: Literal["live", "test"]
    created_at: str
    expires_at: str = Field(description="When the link, and the session it opens, end.")
    opened_at: str | None = Field(description="When the link was used (it works once).")
    revoked_at: str | None


router = APIRouter(prefix="/v1", dependencies=[Depends(reject_unknown_parameters)])


def portal_session_object(session: PortalSession, url: str | None = None) -> dict[str, Any]:
    """A ``webhook_portal_session``; ``url`` only from the answer that creates it."""
    body: dict[str, Any] = {
        "id": session.id,
        "object": "webhook_portal_session",
        "project_id": session.project_id,
        "mode": session.mode,
        "created_at": rfc3339(session.created_at),
        "expires_at": rfc3339(session.expires_at),
        "opened_at": rfc3339(session.opened_at),
        "revoked_at": rfc3339(session.revoked_at),
    }
    if url is not None:
        body["url"] = url
    return body


def link_url(request: Request, token: str) -> str:
    """The link: under ``WEBHOOKS_PUBLIC_URL`` when set, else a path under this app's root
    (the Cloud API may mount the app under a prefix)."""
    public = state_of(request).settings.public_url
    base = public if public is not None else str(request.scope.get("root_path", "")).rstrip("/")
    return f"{base}{ENTER_PATH}{token}"


@router.post(
    "/webhook_portal_sessions",
    status_code=201,
    response_model=PortalSessionObject,
    responses=ERRORS,
    tags=["portal"],
)
def create_session(request: Request) -> JSONResponse:
    """A single-use link to the portal of the key's project and mode (write keys only),
    valid for WEBHOOKS_PORTAL_TTL (default 1 h): opening it signs the browser in until then."""
    identity = identity_of(request)
    require_write(identity)
    state = state_of(request)
    with translate_errors(state.settings), domain_errors(), state.engine.begin() as conn:
        session, token = create_portal_session(
            conn,
            state.settings.db_schema,
            project_id=identity.project_id,
            mode=identity.mode,
            key_id=identity.key_id,
            ttl=state.settings.portal_ttl,
            now=clock.now(),
        )
    return respond(portal_session_object(session, link_url(request, token)), 201)


@router.delete(
    "/webhook_portal_sessions/{session_id}",
    response_model=PortalSessionObject,
    responses=ERRORS,
    tags=["portal"],
)
def revoke_session(request: Request, session_id: str = Path(max_length=200)) -> JSONResponse:
    """End a portal session now: its link no longer opens, and a browser signed in with it
    is signed out."""
    identity = identity_of(request)
    state = state_of(request)
    schema = state.settings.db_schema
    with translate_errors(state.settings), state.engine.begin() as conn:
        if find_portal_session(conn, schema, identity.world, session_id) is None:
            raise not_found("webhook_portal_session", session_id)
        require_write(identity)
        session = revoke_portal_session(conn, schema, identity.world, session_id, clock.now())
    return respond(portal_session_object(session))
