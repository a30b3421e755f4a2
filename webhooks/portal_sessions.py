"""Portal sessions: a single-use link to the portal, exchanged for a session cookie.

A key with write scope asks for a link (`create_portal_session`); the link carries a token
that works once (`open_portal_session`; `check_portal_link` looks without using it), until
the session's ``expires_at``: opening it
returns a second token, the session cookie's, which lasts until the same moment
(`authenticate_session`). A session can be revoked at any time (`revoke_portal_session`),
which ends the link and the cookie alike. Both tokens are 43 URL-safe random characters
(256 bits): only their SHA-256 is stored, and each token leaves this module once.

A session's world is the project and mode of the key that asked for it: everything the
portal shows or does is scoped to it, as the API scopes a key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.errors import InvalidArgument, InvalidPortalLink, PortalSessionNotFound
from webhooks.ids import new_id
from webhooks.modes import validate_mode
from webhooks.outbox import validate_project_id
from webhooks.pages import Scope

LINK_PREFIX = "pl_"
SESSION_PREFIX = "pss_"

_COLUMNS = "id, project_id, mode, key_id, created_at, expires_at, opened_at, revoked_at"
INSERT_SESSION = f"""
INSERT INTO {{s}}.portal_sessions (id, project_id, mode, key_id, link_hash, created_at,
    expires_at)
VALUES (:id, :project_id, :mode, :key_id, :link_hash, :now, :expires_at)
RETURNING {_COLUMNS}
"""
# The exchange: one statement, so two browsers opening the same link at once cannot both win.
OPEN_LINK = f"""
UPDATE {{s}}.portal_sessions SET opened_at = :now, session_hash = :session_hash
WHERE link_hash = :link_hash AND opened_at IS NULL AND revoked_at IS NULL AND expires_at > :now
RETURNING {_COLUMNS}
"""
SESSION_BY_LINK = f"SELECT {_COLUMNS} FROM {{s}}.portal_sessions WHERE link_hash = :link_hash"
SESSION_BY_COOKIE = (
    f"SELECT {_COLUMNS}, session_hash FROM {{s}}.portal_sessions WHERE session_hash = :session_hash"
)
SESSION_IN_SCOPE = (
    f"SELECT {_COLUMNS} FROM {{s}}.portal_sessions "
    "WHERE id = :id AND project_id = :project_id AND mode = :mode"
)
REVOKE_SESSION = f"""
UPDATE {{s}}.portal_sessions SET revoked_at = coalesce(revoked_at, :now)
WHERE id = :id AND project_id = :project_id AND mode = :mode
RETURNING {_COLUMNS}
"""


@dataclass(frozen=True)
class PortalSession:
    """A portal session as stored (never its tokens)."""

    id: str
    project_id: str
    mode: str
    key_id: str
    created_at: datetime
    expires_at: datetime
    opened_at: datetime | None
    revoked_at: datetime | None

    @property
    def scope(self) -> Scope:
        """The project and mode the session sees."""
        return Scope(project_id=self.project_id, mode=self.mode)


def hash_token(token: str) -> str:
    """The stored form of a link or session token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_token(session_token: str) -> str:
    """The session's CSRF token, for the hidden field of every form.

    Derived from the session cookie's token, which only the browser holding the cookie
    knows, so a page of another site cannot know it (and nothing more is stored).
    """
    return hmac.new(session_token.encode(), b"portal-csrf", hashlib.sha256).hexdigest()


def is_valid_csrf(session_token: str, presented: str | None) -> bool:
    """True if ``presented`` is the session's CSRF token (compared in constant time)."""
    return presented is not None and hmac.compare_digest(csrf_token(session_token), presented)


def create_portal_session(
    conn: Connection,
    schema: str,
    *,
    project_id: str,
    mode: str,
    key_id: str,
    ttl: timedelta,
    now: datetime,
) -> tuple[PortalSession, str]:
    """Create a session for one project and mode; return it with the link's token, which is
    handed out only now.

    Args:
        schema: `Settings.db_schema`.
        key_id: the key that asked (kept to say who opened the portal).
        ttl: how long the link, and the session it opens, last (`Settings.portal_ttl`).
    """
    validate_project_id(project_id)
    if ttl <= timedelta(0):
        raise InvalidArgument("a portal session must last longer than zero (WEBHOOKS_PORTAL_TTL)")
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(
        sql(INSERT_SESSION, schema),
        {
            "id": new_id("ps"),
            "project_id": project_id,
            "mode": validate_mode(mode),
            "key_id": key_id,
            "link_hash": hash_token(token),
            "now": now,
            "expires_at": now + ttl,
        },
    ).one()
    return _session(row), token


def open_portal_session(
    conn: Connection, schema: str, link_token: str, now: datetime
) -> tuple[PortalSession, str]:
    """Exchange a link's token, once, for a session token (the cookie's value).

    Raises:
        InvalidPortalLink: the link is unknown, was used already, has expired or was revoked.
    """
    session_token = SESSION_PREFIX + secrets.token_urlsafe(32)
    link_hash = hash_token(link_token)
    row = conn.execute(
        sql(OPEN_LINK, schema),
        {"link_hash": link_hash, "session_hash": hash_token(session_token), "now": now},
    ).one_or_none()
    if row is not None:
        return _session(row), session_token
    check_portal_link(conn, schema, link_token, now)
    raise InvalidPortalLink("used")


def check_portal_link(
    conn: Connection, schema: str, link_token: str, now: datetime
) -> PortalSession:
    """The session a link would open, without opening it (a page that asks the viewer to
    continue is shown first: mail scanners and chat previews fetch links, and must not use
    them up).

    Raises:
        InvalidPortalLink: the link is unknown, was used already, has expired or was revoked.
    """
    found = conn.execute(
        sql(SESSION_BY_LINK, schema), {"link_hash": hash_token(link_token)}
    ).one_or_none()
    if found is None:
        raise InvalidPortalLink("unknown")
    session = _session(found)
    reason = _why_unusable(session, now) or ("used" if session.opened_at is not None else None)
    if reason is not None:
        raise InvalidPortalLink(reason)
    return session


def authenticate_session(
    conn: Connection, schema: str, session_token: str, now: datetime
) -> PortalSession:
    """The usable session a cookie's token belongs to; else raise `InvalidPortalLink`."""
    presented = hash_token(session_token)
    row = conn.execute(sql(SESSION_BY_COOKIE, schema), {"session_hash": presented}).one_or_none()
    if row is None or not hmac.compare_digest(str(row.session_hash), presented):
        raise InvalidPortalLink("unknown")
    session = _session(row)
    reason = _why_unusable(session, now)
    if reason is not None:
        raise InvalidPortalLink(reason)
    return session


def find_portal_session(
    conn: Connection, schema: str, scope: Scope, session_id: str
) -> PortalSession | None:
    """One session if it is in ``scope``, else None."""
    row = conn.execute(
        sql(SESSION_IN_SCOPE, schema),
        {"id": session_id, "project_id": scope.project_id, "mode": scope.mode},
    ).one_or_none()
    return None if row is None else _session(row)


def revoke_portal_session(
    conn: Connection, schema: str, scope: Scope, session_id: str, now: datetime
) -> PortalSession:
    """End a session of ``scope`` now (its link and its cookie); revoking it again changes
    nothing. Raises `PortalSessionNotFound` for an id that is not in ``scope``."""
    row = conn.execute(
        sql(REVOKE_SESSION, schema),
        {"id": session_id, "project_id": scope.project_id, "mode": scope.mode, "now": now},
    ).one_or_none()
    if row is None:
        raise PortalSessionNotFound(session_id)
    return _session(row)


def _why_unusable(session: PortalSession, now: datetime) -> str | None:
    if session.revoked_at is not None:
        return "revoked"
    if session.expires_at <= now:
        return "expired"
    return None


def _session(row: Any) -> PortalSession:
    return PortalSession(
        id=row.id,
        project_id=row.project_id,
        mode=row.mode,
        key_id=row.key_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        opened_at=row.opened_at,
        revoked_at=row.revoked_at,
    )
