"""``Idempotency-Key`` on POSTs: the same key and request within 24 h get the first answer.

The key is claimed in the transaction that does the work: a row is inserted first, so a
second request with the same key waits on the unique index until the first commits (then it
reads the first answer) or rolls back (then it does the work itself). Only successes are
kept: a request that failed did nothing, and may simply be sent again. The request is
identified by the SHA-256 of its method, path and body; the same key with another request is
a 409.

An answer that carries an endpoint secret (create, rotate) is kept with the secret sealed
like the endpoint's own (`WEBHOOKS_SECRET_KEY`): the idempotency table is no back door to
secrets at rest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from webhooks.api._errors import ApiError, invalid
from webhooks.database import sql
from webhooks.pages import Scope
from webhooks.retention import IDEMPOTENCY_KEPT_FOR
from webhooks.sealing import seal, unseal
from webhooks.settings import Settings

# `webhooks prune` deletes the answers older than this.
KEPT_FOR = IDEMPOTENCY_KEPT_FOR
MAX_KEY_LENGTH = 255

CLAIM = """
INSERT INTO {s}.api_idempotency
    (project_id, mode, idempotency_key, request_hash, status, response, created_at)
VALUES (:project_id, :mode, :key, :request_hash, 0, 'null', :now)
ON CONFLICT (project_id, mode, idempotency_key) DO NOTHING
RETURNING 1
"""
STORED = """
SELECT request_hash, status, response, created_at FROM {s}.api_idempotency
WHERE project_id = :project_id AND mode = :mode AND idempotency_key = :key
FOR UPDATE
"""
# An answer older than 24 h is forgotten: the key starts again with this request.
RECLAIM = """
UPDATE {s}.api_idempotency
SET request_hash = :request_hash, status = 0, response = 'null', created_at = :now
WHERE project_id = :project_id AND mode = :mode AND idempotency_key = :key
"""
STORE = """
UPDATE {s}.api_idempotency SET status = :status, response = :response
WHERE project_id = :project_id AND mode = :mode AND idempotency_key = :key
"""


@dataclass(frozen=True)
class StoredAnswer:
    """The first answer to a request."""

    status: int
    body: Any


def request_hash(method: str, path: str, body: bytes) -> str:
    """What identifies a request for its idempotency key."""
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def validate_key(key: str) -> str:
    """400 for an empty or over-long key."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise invalid(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters, e.g. a UUID",
            param="Idempotency-Key",
        )
    return key


def claim(
    conn: Connection, settings: Settings, scope: Scope, key: str, hashed: str, now: datetime
) -> StoredAnswer | None:
    """Claim ``key`` for this request; return the first answer if it was already given.

    Raises:
        ApiError: 409, the key was used with another request in the last 24 h.
    """
    params = {
        "project_id": scope.project_id,
        "mode": scope.mode,
        "key": key,
        "request_hash": hashed,
        "now": now,
    }
    schema = settings.db_schema
    if conn.execute(sql(CLAIM, schema), params).first() is not None:
        return None
    row = conn.execute(sql(STORED, schema), params).one()
    if row.created_at <= now - KEPT_FOR:
        conn.execute(sql(RECLAIM, schema), params)
        return None
    if row.request_hash != hashed:
        raise ApiError(
            409,
            "conflict",
            "this Idempotency-Key was already used with another request in the last 24 h; "
            "use a new key for a new request",
            param="Idempotency-Key",
        )
    return StoredAnswer(
        status=int(row.status),
        body=_with_secret(json.loads(row.response), unseal, settings.secret_keys),
    )


def store(
    conn: Connection, settings: Settings, scope: Scope, key: str, status: int, body: Any
) -> None:
    """Keep the answer given to the request that claimed ``key`` (its secret sealed)."""
    body = _with_secret(body, seal, settings.secret_keys)
    conn.execute(
        sql(STORE, settings.db_schema),
        {
            "project_id": scope.project_id,
            "mode": scope.mode,
            "key": key,
            "status": status,
            "response": json.dumps(body),
        },
    )


def _with_secret(
    body: Any, transform: Callable[[str, tuple[str, ...]], str], keys: tuple[str, ...]
) -> Any:
    if isinstance(body, dict) and isinstance(body.get("secret"), str):
        return {**body, "secret": transform(body["secret"], keys)}
    return body
