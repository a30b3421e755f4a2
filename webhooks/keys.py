"""API keys: who may call the HTTP API, for which project and mode, and how much.

A key is ``sk_live_`` or ``sk_test_`` followed by 40 random letters and digits (about 238
bits). Only its SHA-256 is stored: a key that random cannot be guessed from its hash, so no
salt or slow hash is needed, and a key is found by one probe of a unique index on the hash.
The key itself leaves this module once, from `create_key` or `rotate_key`.

`authenticate` turns a presented key into the `ApiKey` it belongs to, or raises
`InvalidApiKey` (unknown, expired or revoked: the API answers 401 to all three alike). A
rotated key keeps working until the end of its grace period, which is its ``expires_at``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from webhooks import clock
from webhooks.database import sql
from webhooks.errors import ApiKeyNotFound, InvalidApiKey, InvalidArgument
from webhooks.ids import new_id
from webhooks.models import rfc3339
from webhooks.modes import validate_mode, validate_optional_mode
from webhooks.outbox import validate_project_id
from webhooks.settings import IPNetwork

SCOPES = ("read", "write")
KEY_PREFIXES = {"live": "sk_live_", "test": "sk_test_"}
KEY_RANDOM_LENGTH = 40
_ALPHABET = string.ascii_letters + string.digits
# `last_used_at` is written when the stored one is older than this: a busy key costs one
# UPDATE a minute, not one per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
DEFAULT_ROTATION_GRACE = timedelta(hours=24)

_COLUMNS = (
    "id, project_id, mode, scope, last4, allowed_networks, created_at, expires_at, revoked_at, "
    "last_used_at, rotated_from"
)
INSERT_KEY = f"""
INSERT INTO {{s}}.api_keys (id, project_id, mode, scope, key_hash, last4, allowed_networks,
    created_at, expires_at, rotated_from)
VALUES (:id, :project_id, :mode, :scope, :key_hash, :last4, CAST(:allowed_networks AS cidr[]),
    :now, :expires_at, :rotated_from)
RETURNING {_COLUMNS}
"""
KEY_BY_HASH = f"SELECT {_COLUMNS}, key_hash FROM {{s}}.api_keys WHERE key_hash = :key_hash"
KEY_BY_ID = f"SELECT {_COLUMNS} FROM {{s}}.api_keys WHERE id = :id"
LIST_KEYS = f"""
SELECT {_COLUMNS} FROM {{s}}.api_keys
WHERE (CAST(:project_id AS text) IS NULL OR project_id = :project_id)
  AND (CAST(:mode AS text) IS NULL OR mode = :mode)
ORDER BY created_at, id
"""
# The grace period only ever shortens a key's life: an old key that expires sooner keeps
# its own date.
END_GRACE = """
UPDATE {s}.api_keys SET expires_at = least(coalesce(expires_at, :until), :until)
WHERE id = :id
"""
REVOKE_KEY = """
UPDATE {s}.api_keys SET revoked_at = coalesce(revoked_at, :now) WHERE id = :id
RETURNING id
"""
TOUCH_KEY = """
UPDATE {s}.api_keys SET last_used_at = :now
WHERE id = :id AND (last_used_at IS NULL OR last_used_at < :stale)
"""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without the key itself (only its last four characters)."""

    id: str
    project_id: str
    mode: str
    scope: str
    last4: str
    allowed_networks: tuple[IPNetwork, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_from: str | None

    def is_usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows(self, address: str | None) -> bool:
        """True if a request from ``address`` may use this key (no networks: from anywhere)."""
        if not self.allowed_networks:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.allowed_networks)

    def to_json(self) -> dict[str, Any]:
        """The `key list --json` element shape (never the key)."""
        return {
            "id": self.id,
            "project_id": self.project_id,
            "mode": self.mode,
            "scope": self.scope,
            "last4": self.last4,
            "allowed_networks": [str(n) for n in self.allowed_networks],
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "revoked_at": rfc3339(self.revoked_at),
            "last_used_at": rfc3339(self.last_used_at),
            "rotated_from": self.rotated_from,
        }


def hash_key(key: str) -> str:
    """The stored form of a key: its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_networks(values: list[str] | tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parse ``--allow-ip`` networks (``203.0.113.0/24``, ``2001:db8::/32``, one address)."""
    networks = []
    for value in (v.strip() for v in values):
        if not value:
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise InvalidArgument(
                f"--allow-ip {value!r} is not a network; write a CIDR such as 203.0.113.0/24 "
                "or one address"
            ) from exc
    return tuple(networks)


def create_key(
    conn: Connection,
    schema: str,
    *,
    project_id: str,
    mode: str,
    scope: str = "write",
    allowed_networks: tuple[IPNetwork, ...] = (),
    expires_in: timedelta | None = None,
    rotated_from: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; return it with the key itself, which is shown only now.

    Args:
        schema: `Settings.db_schema`.
        scope: ``read`` (GET only) or ``write`` (everything).
        allowed_networks: requests from elsewhere are refused (empty: from anywhere).
        expires_in: the key stops working this long from now (None: never).
        rotated_from: the key this one replaces (`rotate_key`).
    """
    validate_project_id(project_id)
    checked_mode = validate_mode(mode)
    if scope not in SCOPES:
        raise InvalidArgument(f"scope must be 'read' or 'write', not {scope!r}")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidArgument("--expires-in must be longer than zero, e.g. 90d")
    now = clock.now()
    key = KEY_PREFIXES[checked_mode] + "".join(
        secrets.choice(_ALPHABET) for _ in range(KEY_RANDOM_LENGTH)
    )
    row = conn.execute(
        sql(INSERT_KEY, schema),
        {
            "id": new_id("key"),
            "project_id": project_id,
            "mode": checked_mode,
            "scope": scope,
            "key_hash": hash_key(key),
            "last4": key[-4:],
            "allowed_networks": [str(n) for n in allowed_networks],
            "now": now,
            "expires_at": now + expires_in if expires_in is not None else None,
            "rotated_from": rotated_from,
        },
    ).one()
    return _key(row), key


def get_key(conn: Connection, schema: str, key_id: str) -> ApiKey:
    """Return one key, or raise `ApiKeyNotFound`."""
    row = conn.execute(sql(KEY_BY_ID, schema), {"id": key_id}).one_or_none()
    if row is None:
        raise ApiKeyNotFound(key_id)
    return _key(row)


def list_keys(
    conn: Connection, schema: str, *, project_id: str | None = None, mode: str | None = None
) -> list[ApiKey]:
    """Every key (revoked and expired ones too), oldest first, of one project and/or mode."""
    rows = conn.execute(
        sql(LIST_KEYS, schema),
        {"project_id": project_id, "mode": validate_optional_mode(mode)},
    )
    return [_key(row) for row in rows]


def rotate_key(
    conn: Connection, schema: str, key_id: str, *, grace: timedelta = DEFAULT_ROTATION_GRACE
) -> tuple[ApiKey, str]:
    """Replace a key: a new one with the same project, mode, scope and networks; the old one
    keeps working for ``grace`` (0: it stops now). Returns the new key and the key itself.

    Raises:
        ApiKeyNotFound: no key has this id.
        InvalidArgument: the key is revoked or expired (create a new one instead), or the
            grace is negative.
    """
    if grace < timedelta(0):
        raise InvalidArgument("--grace must not be negative, e.g. 24h (or 0 to end it now)")
    old = get_key(conn, schema, key_id)
    now = clock.now()
    if not old.is_usable(now):
        raise InvalidArgument(
            f"key {key_id} is revoked or expired, so there is nothing to rotate; create a new "
            f"key with `webhooks key create --project {old.project_id} --mode {old.mode}`"
        )
    remaining = old.expires_at - now if old.expires_at is not None else None
    new, key = create_key(
        conn,
        schema,
        project_id=old.project_id,
        mode=old.mode,
        scope=old.scope,
        allowed_networks=old.allowed_networks,
        expires_in=remaining,
        rotated_from=old.id,
    )
    conn.execute(sql(END_GRACE, schema), {"id": old.id, "until": now + grace})
    return new, key


def revoke_key(conn: Connection, schema: str, key_id: str) -> ApiKey:
    """Revoke a key at once (revoking it again changes nothing); return it."""
    if conn.execute(sql(REVOKE_KEY, schema), {"id": key_id, "now": clock.now()}).first() is None:
        raise ApiKeyNotFound(key_id)
    return get_key(conn, schema, key_id)


def authenticate(conn: Connection, schema: str, presented: str, now: datetime) -> ApiKey:
    """Return the usable key ``presented`` is, recording its use; else raise `InvalidApiKey`.

    The lookup is by hash, so timing can tell nothing about a stored key's characters; the
    hashes are compared once more in constant time so that the check does not rest on how the
    index compares strings.
    """
    presented_hash = hash_key(presented)
    row = conn.execute(sql(KEY_BY_HASH, schema), {"key_hash": presented_hash}).one_or_none()
    if row is None or not hmac.compare_digest(str(row.key_hash), presented_hash):
        raise InvalidApiKey("unknown")
    key = _key(row)
    if key.revoked_at is not None:
        raise InvalidApiKey("revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise InvalidApiKey("expired")
    if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
        conn.execute(
            sql(TOUCH_KEY, schema),
            {"id": key.id, "now": now, "stale": now - LAST_USED_RESOLUTION},
        )
    return key


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        project_id=row.project_id,
        mode=row.mode,
        scope=row.scope,
        last4=row.last4,
        allowed_networks=tuple(ipaddress.ip_network(str(n)) for n in row.allowed_networks or ()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        rotated_from=row.rotated_from,
    )
