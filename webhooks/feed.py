"""The attempts just recorded, for live tails (the HTTP API's attempt stream).

A tail does not rely on what a notification says (the worker may send one per attempt, one
per recorded batch, with any payload, or none at all with ``WEBHOOKS_NOTIFY=false``): woken
by a notification, or once a second, it asks for the ids above the last it has seen
(`attempt_ids_since`, on the primary key) and reads the rows of the new ones in one query
(`read_attempts`), with what a subscriber filters on (project, mode, endpoint, event, event
type, outcome). Ids are handed out in insertion order, not commit order, so the tail looks
back a little and drops the ids it has already seen.

A client that reconnects with the last id it got reads what it missed of its scope with
`attempt_ids_after`, a walk of the attempt list's indexes in id order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.models import Attempt
from webhooks.pages import Scope, outcome_is, scoped
from webhooks.settings import Settings

# Most ids read in one query; a larger batch is read in several.
MAX_BATCH = 500

FEED_ATTEMPTS = """
SELECT a.id, a.number, a.trigger, a.delivery_id, a.event_id, a.endpoint_id, a.mode,
       a.started_at, a.duration_ms, a.request_url, a.response_status, a.error_kind,
       a.error_message, a.response_body, a.project_id, ev.type AS event_type
FROM {s}.attempts a
JOIN {s}.events ev ON ev.id = a.event_id
WHERE a.id = ANY (CAST(:ids AS bigint[]))
ORDER BY a.id
"""
NEWEST_ATTEMPT = "SELECT coalesce(max(id), 0) FROM {s}.attempts"
# Ids only, on the primary key: cheap however many rows the look-back covers.
ATTEMPT_IDS_SINCE = """
SELECT id FROM {s}.attempts WHERE id > :floor ORDER BY id LIMIT :limit
"""
ATTEMPT_IDS_AFTER = "SELECT a.id FROM {s}.attempts a WHERE {where} ORDER BY a.id LIMIT :limit"


@dataclass(frozen=True)
class FeedItem:
    """A recorded attempt, with the project and event type a subscriber may filter on."""

    attempt: Attempt
    project_id: str
    event_type: str


def read_attempts(conn: Connection, settings: Settings, ids: Sequence[int]) -> list[FeedItem]:
    """The attempts with these ids (those retention has not removed), in id order."""
    items: list[FeedItem] = []
    for start in range(0, len(ids), MAX_BATCH):
        rows = conn.execute(
            sql(FEED_ATTEMPTS, settings.db_schema), {"ids": list(ids[start : start + MAX_BATCH])}
        )
        for row in rows:
            fields = dict(row._mapping)
            project_id, event_type = fields.pop("project_id"), fields.pop("event_type")
            items.append(FeedItem(Attempt(**fields), project_id, event_type))
    return items


def newest_attempt_id(conn: Connection, settings: Settings) -> int:
    """The highest attempt id so far (0 for none): where a poll starts."""
    return int(conn.execute(sql(NEWEST_ATTEMPT, settings.db_schema)).scalar_one())


def attempt_ids_since(
    conn: Connection, settings: Settings, floor: int, limit: int = 10_000
) -> list[int]:
    """Ids above ``floor``, oldest first (a caller keeps ``floor`` a few seconds behind the
    newest id it has seen, so an attempt whose transaction commits late is still found)."""
    rows = conn.execute(
        sql(ATTEMPT_IDS_SINCE, settings.db_schema), {"floor": floor, "limit": limit}
    )
    return [int(row.id) for row in rows]


def attempt_ids_after(
    conn: Connection,
    settings: Settings,
    scope: Scope,
    after: int,
    limit: int,
    *,
    endpoint_id: str | None = None,
    event_id: str | None = None,
    status: str | None = None,
) -> list[int]:
    """The first ``limit`` ids of the scope's attempts above ``after``, oldest first (an
    index walk in id order: the attempt list's indexes, read forwards)."""
    where = scoped("a", scope).add("a.id > :after", after=after)
    where.when(endpoint_id, "a.endpoint_id = :endpoint_id", "endpoint_id")
    where.when(event_id, "a.event_id = :event_id", "event_id")
    if status is not None:
        where.add(outcome_is(status))
    rows = conn.execute(
        sql(ATTEMPT_IDS_AFTER.replace("{where}", where.sql), settings.db_schema),
        {**where.params, "limit": limit},
    )
    return [int(row.id) for row in rows]
