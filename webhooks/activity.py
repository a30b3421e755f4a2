"""Each endpoint's recent activity, as the portal's list of endpoints shows it: attempts and
successes over a window (the last 24 h), and the last attempt ever made.

An attempt succeeded when it got a 2xx and no error, the rule `webhooks.pages` filters
attempts by (``status=succeeded``). Both reads walk ``attempts_endpoint_started (endpoint_id,
started_at)`` (migration 0014), so a page of endpoints costs its size, not the history's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.settings import Settings

ACTIVITY = """
SELECT e.id AS endpoint_id,
       coalesce(w.attempts, 0) AS attempts,
       coalesce(w.succeeded, 0) AS succeeded,
       last.started_at AS last_at, last.response_status AS last_status,
       last.error_kind AS last_error_kind,
       coalesce(last.error_kind IS NULL AND last.response_status BETWEEN 200 AND 299, false)
           AS last_succeeded
FROM unnest(CAST(:ids AS text[])) AS e(id)
LEFT JOIN LATERAL (
    SELECT count(*) AS attempts,
           count(*) FILTER (WHERE a.error_kind IS NULL
                              AND a.response_status BETWEEN 200 AND 299) AS succeeded
    FROM {s}.attempts a WHERE a.endpoint_id = e.id AND a.started_at >= :since
) w ON true
LEFT JOIN LATERAL (
    SELECT a.started_at, a.response_status, a.error_kind FROM {s}.attempts a
    WHERE a.endpoint_id = e.id ORDER BY a.started_at DESC LIMIT 1
) last ON true
"""


@dataclass(frozen=True)
class Activity:
    """One endpoint's attempts since a moment, and its last attempt."""

    attempts: int
    succeeded: int
    last_at: datetime | None
    last_status: int | None
    last_error_kind: str | None
    last_succeeded: bool

    @property
    def success_rate(self) -> float | None:
        """Successes over attempts, 0 to 1 (None: no attempt in the window)."""
        return self.succeeded / self.attempts if self.attempts else None


NO_ACTIVITY = Activity(0, 0, None, None, None, False)


def endpoint_activity(
    conn: Connection, settings: Settings, endpoint_ids: Sequence[str], since: datetime
) -> dict[str, Activity]:
    """Each endpoint's attempts since ``since`` and its last attempt, by endpoint id.

    The caller passes ids it already found in its world (a page of endpoints).
    """
    if not endpoint_ids:
        return {}
    rows = conn.execute(
        sql(ACTIVITY, settings.db_schema), {"ids": list(endpoint_ids), "since": since}
    ).all()
    return {
        row.endpoint_id: Activity(
            attempts=int(row.attempts),
            succeeded=int(row.succeeded),
            last_at=row.last_at,
            last_status=row.last_status,
            last_error_kind=row.last_error_kind,
            last_succeeded=bool(row.last_succeeded),
        )
        for row in rows
    }
