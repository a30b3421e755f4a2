"""Endpoints: where customers want their events, with secrets, filters and an on/off switch.

Every function takes an open connection (the caller owns the transaction) and the settings,
except `reseal_secrets`, which walks every endpoint in short transactions of its own.
Secrets leave this module to be shown only from `add_endpoint` and `rotate_secret`, the two
operations whose job is to show them once; `signing_secrets` hands them to code that signs
with them (the receiver check) and never shows them.

Deleting an endpoint is soft (`delete_endpoint`): the row stays, with ``deleted_at``, so its
id is never reused and its attempts keep naming an endpoint that can be shown; it leaves the
listings, its unfinished deliveries become ``cancelled``, and every operation that would
change it or send to it raises `EndpointDeleted`.

A rotated-out secret is *retired* once its grace period is over: it no longer signs, and it
is dropped from the row by the next rotation, by `reseal_secrets`, and by the dispatchers'
periodic `drop_retired_secrets`, so an old secret is not kept at rest for longer than needed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import idna
from sqlalchemy.engine import Connection, Engine

from webhooks import clock
from webhooks.addresses import IPAddress, blocked_reason, literal_ip
from webhooks.database import sql
from webhooks.errors import (
    ConfigurationError,
    EndpointDeleted,
    EndpointNotFound,
    InvalidArgument,
    InvalidEndpointURL,
)
from webhooks.event_types import validate_filters
from webhooks.ids import new_id
from webhooks.models import Endpoint
from webhooks.modes import LIVE, validate_mode, validate_optional_mode
from webhooks.outbox import notify_dispatchers, validate_project_id
from webhooks.sealing import NO_KEY, reseal, seal, unseal
from webhooks.settings import Settings
from webhooks.signing import generate_secret

DEFAULT_ROTATION_GRACE = timedelta(hours=24)
RESEAL_BATCH = 500
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 1000

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

ENDPOINT_COLUMNS = _COLUMNS = (
    "id, project_id, mode, url, event_types, enabled, disabled_reason, created_at, updated_at, "
    "rate_limit, failing_since, failing_reason, description, deleted_at"
)

# The statements, named; `{s}` is the schema (`database.sql`). Every one that changes an
# endpoint refuses a deleted one (the caller then says why, `_missing`).
INSERT_ENDPOINT = f"""
INSERT INTO {{s}}.endpoints (id, project_id, mode, url, secrets, event_types, enabled,
    created_at, updated_at)
VALUES (:id, :project_id, :mode, :url, CAST(:secrets AS jsonb), :event_types, true, :now, :now)
RETURNING {_COLUMNS}"""
SELECT_ENDPOINT = f"SELECT {_COLUMNS} FROM {{s}}.endpoints WHERE id = :id"
SELECT_SECRETS = "SELECT secrets FROM {s}.endpoints WHERE id = :id AND deleted_at IS NULL"
LIST_ENDPOINTS = f"""
SELECT {_COLUMNS} FROM {{s}}.endpoints WHERE deleted_at IS NULL
  AND (CAST(:project_id AS text) IS NULL OR project_id = :project_id)
  AND (CAST(:mode AS text) IS NULL OR mode = :mode)
ORDER BY created_at, id"""
DISABLE_ENDPOINT = f"""
UPDATE {{s}}.endpoints SET enabled = false, disabled_reason = :reason, updated_at = :now
WHERE id = :id AND deleted_at IS NULL RETURNING {_COLUMNS}"""
ENABLE_ENDPOINT = f"""
UPDATE {{s}}.endpoints SET enabled = true, disabled_reason = NULL, updated_at = :now
WHERE id = :id AND deleted_at IS NULL RETURNING {_COLUMNS}"""
# Held deliveries leave the due index (next_attempt_at NULL); released, they are due at once.
HOLD_PENDING = """
UPDATE {s}.deliveries SET next_attempt_at = NULL, updated_at = :now
WHERE endpoint_id = :id AND state = 'pending' AND next_attempt_at IS NOT NULL"""
RELEASE_HELD = """
UPDATE {s}.deliveries SET next_attempt_at = :now, updated_at = :now
WHERE endpoint_id = :id AND state = 'pending' AND next_attempt_at IS NULL"""
# `assignments` is built from `_UPDATABLE` column names only, never from input.
UPDATE_ENDPOINT = (
    "UPDATE {{s}}.endpoints SET {assignments}, updated_at = :now WHERE id = :id RETURNING "
    + _COLUMNS
)
DELETE_ENDPOINT = f"""
UPDATE {{s}}.endpoints SET deleted_at = :now, updated_at = :now
WHERE id = :id AND deleted_at IS NULL RETURNING {_COLUMNS}"""
SET_RATE_LIMIT = f"""
UPDATE {{s}}.endpoints SET rate_limit = :rate, updated_at = :now
WHERE id = :id AND deleted_at IS NULL RETURNING {_COLUMNS}"""
STORE_NEW_SECRET = f"""
UPDATE {{s}}.endpoints SET secrets = CAST(:secrets AS jsonb), updated_at = :now
WHERE id = :id RETURNING {_COLUMNS}"""
# `column` is a constant of this module's callers, never input.
LOCK_LIVE = "SELECT {column} FROM {{s}}.endpoints WHERE id = :id AND deleted_at IS NULL FOR UPDATE"


def validate_url(url: str, settings: Settings) -> str:
    """Return ``url`` if deliveries may be sent to it, else raise `InvalidEndpointURL`.

    Hostnames are checked again at every attempt (they may resolve anywhere); a literal
    address can be judged now, so one in a blocked range is refused at creation.
    """
    if (
        not url
        or len(url) > MAX_URL_LENGTH
        or any(c.isspace() for c in url)
        or _CONTROL.search(url)
    ):
        raise InvalidEndpointURL(
            "endpoint URL must be non-empty, without spaces or control characters, at most "
            f"{MAX_URL_LENGTH} characters"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpointURL(f"endpoint URL {url!r} is malformed: {exc}") from exc
    allowed = ("https", "http") if settings.allow_http else ("https",)
    if parts.scheme.lower() not in allowed:
        hint = (
            ""
            if settings.allow_http
            else " (set WEBHOOKS_ALLOW_HTTP=true to allow http in development)"
        )
        raise InvalidEndpointURL(
            f"endpoint URL must use https, not {parts.scheme or 'nothing'!r}{hint}"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidEndpointURL("endpoint URL must not carry credentials (user:password@)")
    if parts.fragment or url.endswith("#"):
        raise InvalidEndpointURL("endpoint URL must not have a #fragment; receivers never see it")
    host = parts.hostname
    if not host:
        raise InvalidEndpointURL(f"endpoint URL {url!r} has no host")
    if port == 0:
        raise InvalidEndpointURL("endpoint URL port must be between 1 and 65535")
    ascii_host = _normalized_host(host)
    ip = _address_of(ascii_host)
    if ip is None and not _is_hostname(ascii_host):
        raise InvalidEndpointURL(
            f"endpoint URL host {host!r} is neither an IP address nor a valid DNS name"
        )
    if ip is not None:
        reason = blocked_reason(ip, settings.allowed_networks)
        if reason:
            raise InvalidEndpointURL(
                f"endpoint URL points at {ip}, which is refused: {reason}; to allow it on "
                "purpose, add its network to WEBHOOKS_ALLOWED_NETWORKS (e.g. 127.0.0.0/8)"
            )
    if ascii_host != host:
        # A host that UTS-46 maps but the HTTP client refuses would fail at every attempt.
        try:
            httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidEndpointURL(
                f"endpoint URL host {host!r} is written in a form deliveries cannot use; "
                f"write it as {ascii_host}"
            ) from exc
    return url


def _normalized_host(host: str) -> str:
    """The host as resolvers will see it: IDNA (UTS-46) mapped to ASCII.

    UTS-46 maps full-width digits and dots (U+FF11, U+3002, ...) to ASCII, which is what
    makes them an address: the literal-address checks are made on this form.
    """
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidEndpointURL(
            f"endpoint URL host {host!r} is not a valid internationalised domain name ({exc})"
        ) from exc


# The last label of a numeric host: decimal digits, or 0x and hex digits (as libc reads it).
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.ASCII)


def _address_of(host: str) -> IPAddress | None:
    """The address a normalised host denotes, None for a DNS name; refuse ambiguous numbers.

    A host whose last label is a number is an IPv4 address, as browsers and libc read it (no
    top-level domain is numeric). Only four decimal numbers without leading zeros mean the
    same address to every parser: ``010.8.8.8`` is 8.8.8.8 to libc and 10.8.8.8 to others,
    ``0x7f.1`` and ``2130706433`` are 127.0.0.1 to libc only. Those are refused with the
    plain form to write instead.
    """
    if ":" in host:
        return literal_ip(host)
    name = host[:-1] if host.endswith(".") else host
    if not _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        return None
    try:
        return ipaddress.IPv4Address(name)
    except ValueError:
        pass
    meant = literal_ip(name)
    if meant is None:
        raise InvalidEndpointURL(
            f"endpoint URL host {host!r} ends in a number, so it is read as an IPv4 address, "
            "but it is not one; write four decimal numbers (93.184.216.34) or a DNS name"
        )
    raise InvalidEndpointURL(
        f"endpoint URL host {host!r} is a numeric address in an ambiguous form (octal, "
        "hexadecimal or shortened, read differently by different software); write it as "
        f"four decimal numbers: {meant}"
    )


def _is_hostname(host: str) -> bool:
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(ascii_host) <= 253 and bool(_HOSTNAME.match(ascii_host.lower()))


def validate_description(description: str) -> str | None:
    """Return the description to store (None for an empty one), or raise `InvalidArgument`."""
    text = description.strip()
    if len(text) > MAX_DESCRIPTION_LENGTH or _CONTROL.search(text):
        raise InvalidArgument(
            f"an endpoint description must be at most {MAX_DESCRIPTION_LENGTH} characters, "
            "without control characters"
        )
    return text or None


def active_secrets(
    stored: Sequence[dict[str, Any]], now: datetime, keys: tuple[str, ...] = ()
) -> list[str]:
    """Return the secrets that sign right now: the current one and those still in grace.

    Args:
        stored: the endpoint's ``secrets`` column.
        now: the time of the attempt.
        keys: `Settings.secret_keys`, to unseal secrets stored encrypted.
    """
    return [unseal(str(item["secret"]), keys) for item in stored if not is_retired(item, now)]


def is_retired(item: Mapping[str, Any], now: datetime) -> bool:
    """True if a stored secret's grace period is over: it no longer signs, and may go."""
    expires_at = item.get("expires_at")
    return expires_at is not None and datetime.fromisoformat(expires_at) <= now


def add_endpoint(
    conn: Connection,
    settings: Settings,
    *,
    url: str,
    project_id: str,
    event_types: Iterable[str] = (),
    mode: str = LIVE,
) -> tuple[Endpoint, str]:
    """Create an endpoint and return it with its new signing secret (shown only here).

    ``mode`` (``live`` or ``test``) is fixed for its life: it receives only events of its
    project in that mode.
    """
    validate_url(url, settings)
    validate_project_id(project_id)
    checked_mode = validate_mode(mode)
    filters = validate_filters(event_types)
    secret = generate_secret()
    now = clock.now()
    row = conn.execute(
        sql(INSERT_ENDPOINT, settings.db_schema),
        {
            "id": new_id("ep"),
            "project_id": project_id,
            "mode": checked_mode,
            "url": url,
            "secrets": json.dumps(
                [{"secret": seal(secret, settings.secret_keys), "expires_at": None}]
            ),
            "event_types": list(filters),
            "now": now,
        },
    ).one()
    return endpoint_from_row(row), secret


def get_endpoint(
    conn: Connection, settings: Settings, endpoint_id: str, *, include_deleted: bool = False
) -> Endpoint:
    """Return one endpoint, or raise `EndpointNotFound`.

    Args:
        include_deleted: return a deleted endpoint too (to show it: its attempts still name
            it), instead of raising `EndpointDeleted`, which is what a caller about to act on
            it or send to it needs.
    """
    row = conn.execute(
        sql(SELECT_ENDPOINT, settings.db_schema),
        {"id": endpoint_id},
    ).one_or_none()
    if row is None:
        raise EndpointNotFound(endpoint_id)
    if row.deleted_at is not None and not include_deleted:
        raise EndpointDeleted(endpoint_id)
    return endpoint_from_row(row)


def signing_secrets(
    conn: Connection, settings: Settings, endpoint_id: str, now: datetime
) -> list[str]:
    """Return the secrets an endpoint's requests are signed with at ``now`` (never to show).

    Raises:
        EndpointNotFound: no endpoint has this id.
        EndpointDeleted: it was deleted; nothing more is sent to it.
    """
    stored = conn.execute(
        sql(SELECT_SECRETS, settings.db_schema),
        {"id": endpoint_id},
    ).scalar_one_or_none()
    if stored is None:
        _missing(conn, settings, endpoint_id)
    return active_secrets(stored, now, settings.secret_keys)


def list_endpoints(
    conn: Connection,
    settings: Settings,
    *,
    project_id: str | None = None,
    mode: str | None = None,
) -> list[Endpoint]:
    """Return every endpoint not deleted, or those of one project and/or mode, oldest first."""
    rows = conn.execute(
        sql(LIST_ENDPOINTS, settings.db_schema),
        {"project_id": project_id, "mode": validate_optional_mode(mode)},
    )
    return [endpoint_from_row(r) for r in rows]


def disable_endpoint(
    conn: Connection, settings: Settings, endpoint_id: str, *, reason: str | None = None
) -> Endpoint:
    """Stop delivering to an endpoint. Its deliveries are held, not dropped."""
    now = clock.now()
    row = conn.execute(
        sql(DISABLE_ENDPOINT, settings.db_schema),
        {"id": endpoint_id, "reason": reason or "disabled by an operator", "now": now},
    ).one_or_none()
    if row is None:
        _missing(conn, settings, endpoint_id)
    # Held deliveries leave the due index, so a long-disabled endpoint with a big backlog
    # costs the dispatcher nothing. The claim query also checks `enabled`, which covers a
    # worker that reschedules a delivery of this endpoint right now.
    conn.execute(
        sql(HOLD_PENDING, settings.db_schema),
        {"id": endpoint_id, "now": now},
    )
    return endpoint_from_row(row)


def enable_endpoint(conn: Connection, settings: Settings, endpoint_id: str) -> Endpoint:
    """Deliver to an endpoint again; its held deliveries become due at once."""
    now = clock.now()
    row = conn.execute(
        sql(ENABLE_ENDPOINT, settings.db_schema),
        {"id": endpoint_id, "now": now},
    ).one_or_none()
    if row is None:
        _missing(conn, settings, endpoint_id)
    released = conn.execute(
        sql(RELEASE_HELD, settings.db_schema),
        {"id": endpoint_id, "now": now},
    ).rowcount
    if released:
        notify_dispatchers(conn, settings)
    return endpoint_from_row(row)


# What `update_endpoint` may change, column by column. Mode and project are not among them:
# an endpoint's deliveries are bound to both (`deliveries_endpoint_scope`).
_UPDATABLE = ("url", "event_types", "description")
# A new URL is a new chance: the backoff was earned by the old address, so scheduled retries
# become due now. Held rows (endpoint disabled) stay held; rows in flight finish as they are.
RESCHEDULE_PENDING = """
UPDATE {s}.deliveries SET next_attempt_at = :now, updated_at = :now
WHERE endpoint_id = :id AND state = 'pending' AND next_attempt_at > :now
"""
# A deleted endpoint's unfinished deliveries end here. Clearing the claim token stops a
# worker that holds a claim but has not begun its attempt (`recording.begin_attempts` checks the
# token and the state); one whose request is already out records it under `cancelled`.
CANCEL_ENDPOINT_DELIVERIES = """
UPDATE {s}.deliveries
SET state = 'cancelled', next_attempt_at = NULL, claim_token = NULL, lease_expires_at = NULL,
    updated_at = :now
WHERE endpoint_id = :id AND state IN ('pending', 'delivering')
"""
CLOSE_ENDPOINT_REPLAYS = """
UPDATE {s}.replays r SET state = 'done', claim_token = NULL, lease_expires_at = NULL
FROM {s}.deliveries d
WHERE d.id = r.delivery_id AND d.endpoint_id = :id AND r.state IN ('pending', 'delivering')
"""


def update_endpoint(
    conn: Connection,
    settings: Settings,
    endpoint_id: str,
    *,
    url: str | None = None,
    event_types: Iterable[str] | None = None,
    description: str | None = None,
) -> Endpoint:
    """Change an endpoint's URL, event-type filter or description; None leaves one as it is.

    The mode and the project never change. Pending deliveries go to the new URL (a worker
    reads the URL when it begins an attempt), and those waiting for a retry become due now;
    a new filter applies to events published from now on.

    Args:
        url: checked as at creation (`validate_url`).
        event_types: exact types and ``prefix.*``; empty means every type.
        description: free text for operators; empty removes it.

    Raises:
        InvalidArgument: nothing to change, or a bad description.
        InvalidEndpointURL, InvalidEventType: as for `add_endpoint`.
        EndpointNotFound, EndpointDeleted: no such endpoint, or it was deleted.
    """
    values: dict[str, Any] = {}
    if url is not None:
        values["url"] = validate_url(url, settings)
    if event_types is not None:
        values["event_types"] = list(validate_filters(event_types))
    if description is not None:
        values["description"] = validate_description(description)
    if not values:
        raise InvalidArgument("nothing to change: give a new URL, event types or description")
    now = clock.now()
    old_url = _lock_live(conn, settings, endpoint_id, "url")
    assignments = ", ".join(f"{column} = :{column}" for column in _UPDATABLE if column in values)
    row = conn.execute(
        sql(UPDATE_ENDPOINT.format(assignments=assignments), settings.db_schema),
        {**values, "id": endpoint_id, "now": now},
    ).one()
    if values.get("url", old_url) != old_url:
        moved = conn.execute(
            sql(RESCHEDULE_PENDING, settings.db_schema), {"id": endpoint_id, "now": now}
        ).rowcount
        if moved:
            notify_dispatchers(conn, settings)
    return endpoint_from_row(row)


def delete_endpoint(conn: Connection, settings: Settings, endpoint_id: str) -> Endpoint:
    """Delete an endpoint (softly) and cancel its unfinished deliveries; return it as deleted.

    It leaves the listings and nothing more is sent to it: pending and in-flight deliveries
    become ``cancelled``, queued replays are dropped, new events no longer fan out to it. Its
    id is never reused and its attempts stay readable until retention removes them.

    Raises:
        EndpointNotFound, EndpointDeleted: no such endpoint, or it was already deleted.
    """
    now = clock.now()
    row = conn.execute(
        sql(DELETE_ENDPOINT, settings.db_schema),
        {"id": endpoint_id, "now": now},
    ).one_or_none()
    if row is None:
        _missing(conn, settings, endpoint_id)
    params = {"id": endpoint_id, "now": now}
    conn.execute(sql(CANCEL_ENDPOINT_DELIVERIES, settings.db_schema), params)
    conn.execute(sql(CLOSE_ENDPOINT_REPLAYS, settings.db_schema), params)
    return endpoint_from_row(row)


def set_rate_limit(
    conn: Connection, settings: Settings, endpoint_id: str, per_second: float | None
) -> Endpoint:
    """Limit an endpoint to ``per_second`` requests per second (None: no limit)."""
    if per_second is not None and not 0 < per_second <= 100_000:
        raise InvalidArgument("a rate limit must be a number of requests per second above 0")
    row = conn.execute(
        sql(SET_RATE_LIMIT, settings.db_schema),
        {"id": endpoint_id, "rate": per_second, "now": clock.now()},
    ).one_or_none()
    if row is None:
        _missing(conn, settings, endpoint_id)
    return endpoint_from_row(row)


def rotate_secret(
    conn: Connection,
    settings: Settings,
    endpoint_id: str,
    *,
    grace: timedelta = DEFAULT_ROTATION_GRACE,
) -> tuple[Endpoint, str]:
    """Give an endpoint a new secret; older ones keep signing for ``grace``, then stop."""
    now = clock.now()
    stored = _lock_live(conn, settings, endpoint_id, "secrets")
    expires = (now + grace).isoformat()
    kept = [
        {"secret": item["secret"], "expires_at": min(item["expires_at"] or expires, expires)}
        for item in stored
        if not is_retired(item, now)
    ]
    secret = generate_secret()
    row = conn.execute(
        sql(STORE_NEW_SECRET, settings.db_schema),
        {
            "id": endpoint_id,
            "secrets": json.dumps(
                [{"secret": seal(secret, settings.secret_keys), "expires_at": None}, *kept]
            ),
            "now": now,
        },
    ).one()
    return endpoint_from_row(row), secret


@dataclass(frozen=True)
class ResealReport:
    """What `reseal_secrets` did: endpoints walked, secrets sealed anew, retired ones dropped."""

    endpoints: int
    resealed: int
    dropped: int

    def as_dict(self) -> dict[str, int]:
        """The ``--json`` form."""
        return {"endpoints": self.endpoints, "resealed": self.resealed, "dropped": self.dropped}


RESEAL_PAGE = """
SELECT id, secrets FROM {s}.endpoints WHERE id > :after ORDER BY id LIMIT :limit FOR UPDATE
"""
STORE_SECRETS = "UPDATE {s}.endpoints SET secrets = CAST(:secrets AS jsonb) WHERE id = :id"
# The same rule as `is_retired`, for every row at once. `expires_at` is written by
# `rotate_secret` as an ISO 8601 time with its offset, which Postgres reads as timestamptz.
# Rows being changed right now (a rotation) are skipped, not waited for: another pass comes.
DROP_RETIRED = """
UPDATE {s}.endpoints e
SET secrets = (SELECT coalesce(jsonb_agg(item ORDER BY n), CAST('[]' AS jsonb))
               FROM jsonb_array_elements(e.secrets) WITH ORDINALITY AS s(item, n)
               WHERE item->>'expires_at' IS NULL
                  OR CAST(item->>'expires_at' AS timestamptz) > :now)
WHERE e.id IN (SELECT r.id FROM {s}.endpoints r
               WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(r.secrets) item
                             WHERE CAST(item->>'expires_at' AS timestamptz) <= :now)
               FOR UPDATE SKIP LOCKED)
"""


def reseal_secrets(
    engine: Engine, settings: Settings, *, batch_size: int = RESEAL_BATCH
) -> ResealReport:
    """Seal every stored secret under the first key of `WEBHOOKS_SECRET_KEY`; drop retired ones.

    Plain-text secrets are sealed, and secrets sealed under an older key listed after the
    first are sealed again under the first, so the older key can then be removed. Endpoints
    are walked by id in batches, each its own short transaction (rotations of other endpoints
    go on meanwhile); a run stopped half-way is finished by running it again.

    Raises:
        ConfigurationError: no key is set, or a secret still in use was sealed with a key
            that is not listed (naming the endpoint); the batches before it are done.
    """
    if not settings.secret_keys:
        raise ConfigurationError(NO_KEY)
    endpoints = resealed = dropped = 0
    after = ""
    while True:
        with engine.begin() as conn:
            now = clock.now()
            rows = conn.execute(
                sql(RESEAL_PAGE, settings.db_schema), {"after": after, "limit": batch_size}
            ).all()
            updates = []
            for row in rows:
                kept = [item for item in row.secrets if not is_retired(item, now)]
                try:
                    sealed = [
                        {**item, "secret": reseal(str(item["secret"]), settings.secret_keys)}
                        for item in kept
                    ]
                except ConfigurationError as exc:
                    raise ConfigurationError(f"endpoint {row.id}: {exc}") from exc
                updates.append({"id": row.id, "secrets": json.dumps(sealed)})
                resealed += len(sealed)
                dropped += len(row.secrets) - len(kept)
            if updates:
                conn.execute(sql(STORE_SECRETS, settings.db_schema), updates)
        endpoints += len(rows)
        if len(rows) < batch_size:
            return ResealReport(endpoints=endpoints, resealed=resealed, dropped=dropped)
        after = rows[-1].id


def drop_retired_secrets(conn: Connection, settings: Settings, now: datetime) -> int:
    """Remove secrets whose grace period is over from every endpoint; return how many rows.

    They no longer sign anything; keeping them would only keep an old secret at rest.
    """
    return int(conn.execute(sql(DROP_RETIRED, settings.db_schema), {"now": now}).rowcount)


def _lock_live(conn: Connection, settings: Settings, endpoint_id: str, column: str) -> Any:
    """Lock a live (not deleted) endpoint's row for this transaction and read one column."""
    value = conn.execute(
        sql(LOCK_LIVE.format(column=column), settings.db_schema),
        {"id": endpoint_id},
    ).scalar_one_or_none()
    if value is None:
        _missing(conn, settings, endpoint_id)
    return value


def _missing(conn: Connection, settings: Settings, endpoint_id: str) -> NoReturn:
    """Raise why an endpoint cannot be changed: it was deleted, or it never existed."""
    get_endpoint(conn, settings, endpoint_id, include_deleted=True)
    raise EndpointDeleted(endpoint_id)


def endpoint_from_row(row: Any) -> Endpoint:
    """An `Endpoint` from a row of `ENDPOINT_COLUMNS`."""
    return Endpoint(
        id=row.id,
        project_id=row.project_id,
        mode=row.mode,
        url=row.url,
        event_types=tuple(row.event_types),
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        rate_limit=row.rate_limit,
        failing_since=row.failing_since,
        failing_reason=row.failing_reason,
        description=row.description,
        deleted_at=row.deleted_at,
    )
