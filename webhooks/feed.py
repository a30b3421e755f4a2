"""The attempts just recorded, for live tails (the HTTP API's attempt stream).

Each recorded attempt is announced on the attempts channel with its id
(`claims.NOTIFY_ATTEMPT`); a tail reads the rows of a batch of ids in one query, with what a
subscriber filters on (project, mode, endpoint, event, event type, outcome). With
``WEBHOOKS_NOTIFY=false`` nothing is announced and a tail polls for ids instead: ids are
handed out in insertion order, not commit order, so a poll looks back a little
(`attempt_ids_since`) and the tail drops the ids it has already seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.models import Attempt
from webhooks.settings import Settings

# Most ids read in one query; a larger batch is read in several.
MAX_BATCH = 500

FEED_ATTEMPTS = """
SELECT a.id, a.number, a.trigger, a.delivery_id, a.event_id, a.endpoint_id, d.mode,
       a.started_at, a.duration_ms, a.request_url, a.response_status, a.error_kind,
       a.error_message, a.response_body, d.project_id, ev.type AS event_type
FROM {s}.attempts a
JOIN {s}.deliveries d ON d.id = a.delivery_id
JOIN {s}.events ev ON ev.id = a.event_id
WHERE a.id = ANY (CAST(:ids AS bigint[]))
ORDER BY a.id
"""
NEWEST_ATTEMPT = "SELECT coalesce(max(id), 0) FROM {s}.attempts"
# Ids only, on the primary key: cheap however many rows the look-back covers.
ATTEMPT_IDS_SINCE = """
SELECT id FROM {s}.attempts WHERE id > :floor ORDER BY id LIMIT :limit
"""


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
