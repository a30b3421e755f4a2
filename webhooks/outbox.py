"""The transactional outbox: `publish()` records an event in the caller's transaction, so an
event exists for delivery exactly when the API's own change committed. The dispatchers turn
it into its deliveries after the commit (`webhooks.expansion`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webhooks import clock
from webhooks.database import sql
from webhooks.errors import InvalidArgument, InvalidPayload, PayloadTooLarge
from webhooks.event_types import validate_event_type
from webhooks.ids import new_id
from webhooks.models import rfc3339
from webhooks.modes import LIVE, Mode, validate_mode
from webhooks.settings import Settings, notify_channel

MAX_ENVELOPE_BYTES = 262_144
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_PROJECT_ID_LENGTH = 200

# One round trip records the event and, when WEBHOOKS_NOTIFY is on, wakes the dispatchers
# (delivered at commit; never if the caller rolls back). The deliveries are written after the
# commit, when a dispatcher expands the event (`expansion`), so the caller's transaction
# touches the events table alone, whatever the number of endpoints listening. `only_endpoint`
# (`webhooks trigger --endpoint`, an endpoint's test event) is kept for the expansion, which
# sends the event to that one endpoint whatever its filter says.
NOTIFY = "SELECT pg_notify(:channel, :payload)"
PUBLISH = """
WITH event AS (
    INSERT INTO {s}.events (id, project_id, mode, type, payload, idempotency_key, only_endpoint,
                            created_at, expanded_at)
    VALUES (:id, :project_id, :mode, :type, :payload, :idempotency_key, :only_endpoint,
            :created_at, NULL)
    ON CONFLICT (project_id, mode, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT (SELECT id FROM event) AS id,
       CASE WHEN CAST(:notify AS boolean) AND EXISTS (SELECT 1 FROM event)
            THEN pg_notify(:channel, '') END AS notified
"""

EXISTING_EVENT = """
SELECT id FROM {s}.events
WHERE project_id = :project_id AND mode = :mode AND idempotency_key = :idempotency_key
"""


@dataclass(frozen=True)
class PublishResult:
    """The id of the published event, and whether an earlier publish already recorded it.

    How many deliveries it makes is known once it is expanded (`expansion.expand_event`)."""

    id: str
    duplicate: bool


def channel(settings: Settings) -> str:
    """The LISTEN/NOTIFY channel dispatchers of this schema wait on."""
    return notify_channel(settings.db_schema)


# The payload of a notification that replays were queued: dispatchers look for queued
# replays when they get one, and otherwise only once a second.
REPLAYS_QUEUED = "replays"


def notify_dispatchers(conn: Connection | Session, settings: Settings, payload: str = "") -> None:
    """Wake the dispatchers when the transaction commits (a no-op if it rolls back)."""
    if settings.notify:
        conn.execute(
            sql(NOTIFY, settings.db_schema),
            {"channel": channel(settings), "payload": payload},
        )


def is_valid_unicode(text: str) -> bool:
    """False for a string with a lone surrogate, which has no UTF-8 form to store or send."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_project_id(project_id: str) -> str:
    """Return ``project_id`` if it is a plausible project id."""
    if (
        not isinstance(project_id, str)
        or not project_id.strip()
        or len(project_id) > MAX_PROJECT_ID_LENGTH
        or any(c.isspace() for c in project_id)
        or not is_valid_unicode(project_id)
    ):
        raise InvalidArgument(
            "project id must be a non-empty string without spaces, such as proj_8f3a2b"
        )
    return project_id


def build_envelope(
    *,
    event_id: str,
    event_type: str,
    project_id: str,
    data: Any,
    created_at: str,
    mode: Mode = LIVE,
) -> str:
    """Return the compact JSON envelope, refusing data that is not a JSON object or too big."""
    if not isinstance(data, dict):
        raise InvalidPayload(
            f"event data must be a JSON object, not {type(data).__name__}; wrap it, "
            'e.g. {"value": ...}'
        )
    envelope = {
        "id": event_id,
        "type": event_type,
        "created_at": created_at,
        "project_id": project_id,
        "mode": mode,
        "data": data,
    }
    try:
        text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError as exc:
        raise InvalidPayload(
            "event data is nested too deeply to be serialised; flatten it (receivers' JSON "
            "parsers have depth limits too)"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"event data is not JSON-serialisable: {exc}") from exc
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        # A lone surrogate (half of a UTF-16 pair, e.g. from "\ud800" in JSON) has no UTF-8
        # form: the envelope could not be sent as the bytes the spec promises.
        raise InvalidPayload(
            f"event data contains a lone surrogate ({text[exc.start]!r}), which is not valid "
            "Unicode and cannot be sent as UTF-8; remove it or pair it"
        ) from exc
    if size > MAX_ENVELOPE_BYTES:
        raise PayloadTooLarge(
            f"the event envelope is {size} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit; "
            "send a reference (an id or URL) instead of the whole object"
        )
    return text


def publish_event(
    session: Session | Connection,
    settings: Settings,
    *,
    project_id: str,
    type: str,
    data: Any,
    idempotency_key: str | None = None,
    mode: str = LIVE,
    only_endpoint: str | None = None,
) -> PublishResult:
    """Record an event in the caller's transaction and say whether it was a duplicate.

    Args:
        only_endpoint: deliver to this endpoint alone (it must be of the event's project and
            mode), ignoring filters: a simulated event sent on purpose.
    """
    validate_project_id(project_id)
    checked_mode = validate_mode(mode)
    validate_event_type(type)
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not idempotency_key
        or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH
        or not is_valid_unicode(idempotency_key)
    ):
        raise InvalidArgument(
            f"idempotency key must be a non-empty string of at most "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    now = clock.now()
    event_id = new_id("evt")
    payload = build_envelope(
        event_id=event_id,
        event_type=type,
        project_id=project_id,
        data=data,
        created_at=rfc3339(now.replace(microsecond=0)) or "",
        mode=checked_mode,
    )
    params = {
        "id": event_id,
        "project_id": project_id,
        "mode": checked_mode,
        "only_endpoint": only_endpoint,
        "type": type,
        "payload": payload,
        "idempotency_key": idempotency_key,
        "created_at": now.replace(microsecond=0),
        "notify": settings.notify,
        "channel": channel(settings),
    }
    row = session.execute(sql(PUBLISH, settings.db_schema), params).one()
    if row.id is None:
        existing = session.execute(sql(EXISTING_EVENT, settings.db_schema), params).scalar_one()
        return PublishResult(id=existing, duplicate=True)
    return PublishResult(id=row.id, duplicate=False)


def publish(
    session: Session | Connection,
    *,
    project_id: str,
    type: str,
    data: Any,
    idempotency_key: str | None = None,
    settings: Settings | None = None,
    mode: str = LIVE,
) -> str:
    """Publish an event inside the caller's transaction and return its id (``evt_…``).

    Rolled back, the event is never delivered; committed, it is delivered at least once to
    every enabled endpoint of the project and mode whose filter matches when a dispatcher
    expands it into deliveries (normally within milliseconds of the commit; the transaction
    writes the event row alone, whatever the number of endpoints). Publishing again with an
    idempotency key already used in the project returns the first event's id and delivers
    nothing more.

    Args:
        session: the API's SQLAlchemy `Session` or `Connection`, inside its transaction.
        project_id: the project the event belongs to (``proj_…``).
        type: the event type, e.g. ``deployment.succeeded``.
        data: a JSON object; the envelope must stay under 262,144 bytes.
        idempotency_key: optional; unique per project and mode.
        settings: defaults to `Settings.current()` (only the schema name is used).
        mode: ``"live"`` (default) or ``"test"`` (the sandbox: reaches only test endpoints,
            and the envelope says ``"mode": "test"``).

    Raises:
        PayloadTooLarge: the envelope is over 262,144 bytes (a `ValueError`).
        InvalidPayload: ``data`` is not a JSON object, or cannot be sent as UTF-8 JSON (a
            lone surrogate, nesting deeper than the encoder can follow).
        InvalidArgument: the project id or idempotency key is malformed.
        InvalidEventType: ``type`` is malformed.
        InvalidArgument: ``mode``, ``project_id`` or ``idempotency_key`` is malformed.
    """
    result = publish_event(
        session,
        settings or Settings.current(),
        project_id=project_id,
        type=type,
        data=data,
        idempotency_key=idempotency_key,
        mode=mode,
    )
    return result.id
