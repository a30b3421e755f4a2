"""Who is asking: the key behind ``Authorization: Bearer …``, from where, over what, how often.

`admit` runs before every route: plain HTTP is refused unless allowed; the bearer token is
turned into an `Identity` by the key lookup (ours, `webhooks.keys`, or the Cloud API's own,
passed to `create_app`); a request from outside the key's networks is refused; a live key
is counted against ``WEBHOOKS_API_RATE_LIMIT`` in Postgres, which every API process shares.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine

from webhooks import clock
from webhooks.api._errors import ApiError, forbidden, unauthenticated
from webhooks.database import sql, translate_errors
from webhooks.errors import InvalidApiKey
from webhooks.keys import authenticate
from webhooks.pages import Scope
from webhooks.settings import IPNetwork, Settings


@dataclass(frozen=True)
class Identity:
    """What a key may see and do: its id, project, mode (``live``|``test``) and scope
    (``read``|``write``), and the networks it may be used from (empty: anywhere)."""

    key_id: str
    project_id: str
    mode: str
    scope: str
    allowed_networks: tuple[IPNetwork, ...] = field(default=())

    @property
    def world(self) -> Scope:
        """The project and mode whose objects the key sees."""
        return Scope(project_id=self.project_id, mode=self.mode)


# From the bearer token to the key's identity, or None for a token that is not a usable key.
KeyLookup = Callable[[str], Identity | None]

# One row per live key: the window it is counting and how many requests it has counted. A
# new window starts the count again; the row lock orders concurrent requests of one key.
# Every request of a key updates the key's one row and holds its lock until the commit:
# waiting for the commit to reach the disk made a key's requests queue behind each other's
# flushes, so this statement's commit does not wait (``synchronous_commit`` off for its own
# transaction). A crash may forget the last fraction of a second of counts: no harm to a
# rate limit.
COUNT_REQUEST = """
INSERT INTO {s}.api_rate_limits (key_id, window_start, count)
SELECT :key_id, :window, 1 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_wait
ON CONFLICT (key_id) DO UPDATE SET
    count = CASE WHEN api_rate_limits.window_start = :window THEN api_rate_limits.count + 1
                 ELSE 1 END,
    window_start = :window
RETURNING count
"""


def key_table_lookup(engine: Engine, settings: Settings) -> KeyLookup:
    """The default lookup: our own keys (`webhooks key create`)."""

    def lookup(token: str) -> Identity | None:
        try:
            # Autocommit: the lookup and the occasional last-used update stand alone, and a
            # transaction around them would cost every request a BEGIN and a COMMIT.
            with translate_errors(settings), engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                key = authenticate(conn, settings.db_schema, token, clock.now())
        except InvalidApiKey:
            return None
        return Identity(
            key_id=key.id,
            project_id=key.project_id,
            mode=key.mode,
            scope=key.scope,
            allowed_networks=key.allowed_networks,
        )

    return lookup


def _in(address: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(settings: Settings, peer: str | None, forwarded_for: str | None) -> str | None:
    """The caller's address: the peer, or behind trusted proxies, the last address in
    ``X-Forwarded-For`` that is not one of them (the ones before it are the client's word)."""
    if not _in(peer, settings.api_trusted_proxies) or not forwarded_for:
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        if not _in(hop, settings.api_trusted_proxies):
            return hop
    return peer


def is_secure(
    settings: Settings, scheme: str, peer: str | None, forwarded_proto: str | None
) -> bool:
    """True if the request may be served: https, or https at a trusted proxy, or http allowed."""
    if scheme == "https" or settings.api_allow_http:
        return True
    return _in(peer, settings.api_trusted_proxies) and (forwarded_proto or "").lower() == "https"


def bearer_token(authorization: str | None) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 without one."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated(
            "no API key: send it as `Authorization: Bearer sk_live_…` (or sk_test_…); "
            "`webhooks key create` makes one"
        )
    return token.strip()


def admit(
    settings: Settings,
    lookup: KeyLookup,
    *,
    scheme: str,
    peer: str | None,
    headers: dict[str, str],
) -> Identity:
    """The identity of a request, or the `ApiError` that answers it (401, 403)."""
    if not is_secure(settings, scheme, peer, headers.get("x-forwarded-proto")):
        raise forbidden(
            "plain HTTP is refused: call the API over https (WEBHOOKS_API_ALLOW_HTTP=true "
            "allows it in development; WEBHOOKS_API_TRUSTED_PROXIES names proxies that "
            "terminate TLS)"
        )
    identity = lookup(bearer_token(headers.get("authorization")))
    if identity is None:
        raise unauthenticated(
            "the API key is not valid (unknown, expired or revoked); check it, or create "
            "another with `webhooks key create`"
        )
    if identity.allowed_networks:
        address = client_address(settings, peer, headers.get("x-forwarded-for"))
        if not _in(address, identity.allowed_networks):
            raise forbidden(
                f"this key may only be used from {', '.join(map(str, identity.allowed_networks))}"
                f", not from {address}; call from there or use another key"
            )
    return identity


def count_request(
    engine: Engine, settings: Settings, identity: Identity, now: datetime
) -> dict[str, str]:
    """Count a live key's request; return the rate-limit headers, or raise 429 over the limit.

    Test keys are not limited and get no headers.
    """
    if identity.mode != "live":
        return {}
    limit = settings.api_rate_limit
    period = limit.period.total_seconds()
    window_start = math.floor(now.timestamp() / period) * period
    window = datetime.fromtimestamp(window_start, tz=now.tzinfo)
    with translate_errors(settings), engine.connect() as conn:
        # One statement, committed on its own (autocommit: no BEGIN, no COMMIT round trip).
        conn.execution_options(isolation_level="AUTOCOMMIT")
        count = int(
            conn.execute(
                sql(COUNT_REQUEST, settings.db_schema),
                {"key_id": identity.key_id, "window": window},
            ).scalar_one()
        )
    reset = int(window_start + period)
    headers = {
        "X-RateLimit-Limit": str(limit.requests),
        "X-RateLimit-Remaining": str(max(0, limit.requests - count)),
        "X-RateLimit-Reset": str(reset),
    }
    if count > limit.requests:
        retry_after = max(1, math.ceil(reset - now.timestamp()))
        raise ApiError(
            429,
            "rate_limited",
            f"over this key's limit of {limit.requests} requests per "
            f"{period:g} seconds; retry after {retry_after} s",
            headers={**headers, "Retry-After": str(retry_after)},
        )
    return headers
