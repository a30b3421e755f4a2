"""Recoveries: a bulk replay as a durable job, carried out by whichever dispatcher is alive.

`create_recovery` stores what to replay (a project and mode, maybe one endpoint, a window of
event creation times, a delivery state, an event type) as a ``recoveries`` row and returns
at once. Dispatchers then advance it batch by batch (`advance_recoveries`), each batch one
short transaction that locks the recovery row (``SKIP LOCKED``: one dispatcher at a time,
never waiting), queues the replays of the next events after its cursor and moves the cursor
in the same commit. A batch is therefore applied exactly once: killed before its commit it
never happened, after it the cursor has moved past it. The replays it queued are ordinary
replays (admitted, capped, rate-limited and taking turns with scheduled work, see
`admission`) that carry the recovery's id, and their outcomes are its progress.

A recovery queues its next batch only while fewer than a batch of its replays wait to be
sent, so a recovery of a million deliveries never floods the replays table; replays held by
a disabled endpoint or an open breaker do not count against that, so they do not stall the
rest of a project-wide recovery. It is ``done`` once every event has been looked at and
none of its replays is pending or in flight; ``held`` replays keep it ``running``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from webhooks.database import sql
from webhooks.endpoints import get_endpoint
from webhooks.errors import InvalidArgument, RecoveryNotFound
from webhooks.event_types import SUBSCRIBED_SQL, validate_filters
from webhooks.expansion import expand_events
from webhooks.ids import new_id
from webhooks.models import DELIVERY_STATES, rfc3339
from webhooks.modes import Mode, validate_mode
from webhooks.outbox import REPLAYS_QUEUED, notify_dispatchers, validate_project_id
from webhooks.settings import Settings

# The payload of the notification that a recovery was created: dispatchers look for
# recoveries to advance at once instead of at their next periodic look.
RECOVERIES_CREATED = "recoveries"

# Events of the recovery's project and mode in its window, of its type (exact or prefix.*).
_EVENTS = """ev.project_id = :project_id AND ev.mode = :mode
  AND ev.created_at >= :since AND ev.created_at < :until
  AND (CAST(:event_type AS text) IS NULL OR ev.type = :event_type
       OR (right(:event_type, 2) = '.*' AND starts_with(ev.type, left(:event_type, -1))))"""
# The endpoint's filter, as the expansion applies it.
_SUBSCRIBED = SUBSCRIBED_SQL
# Every (event, endpoint) pair the recovery sends: a delivery in the selected state, or
# (with include_unrouted) no delivery at all to an endpoint that subscribes to the event now.
# Deleted endpoints are never sent to.
_PAIRS = (
    """
FROM {s}.events ev
JOIN {s}.endpoints e ON e.project_id = ev.project_id AND e.mode = ev.mode
    AND e.deleted_at IS NULL AND (CAST(:endpoint_id AS text) IS NULL OR e.id = :endpoint_id)
LEFT JOIN {s}.deliveries d ON d.event_id = ev.id AND d.endpoint_id = e.id
WHERE """
    + _EVENTS
    + """
  AND ((d.id IS NOT NULL AND (CAST(:delivery_state AS text) IS NULL OR d.state = :delivery_state))
       OR (d.id IS NULL AND :include_unrouted AND """
    + _SUBSCRIBED
    + "))"
)
COUNT_SELECTION = "SELECT count(*)" + _PAIRS

INSERT_RECOVERY = """
INSERT INTO {s}.recoveries (id, project_id, mode, endpoint_id, since, until, delivery_state,
    event_type, include_unrouted, total, created_at, updated_at)
VALUES (:id, :project_id, :mode, :endpoint_id, :since, :until, :delivery_state, :event_type,
    :include_unrouted, :total, :now, :now)
"""

# A running recovery with events left to look at and room for another batch of replays,
# least recently advanced first; locked, or skipped if another dispatcher has it.
PICK_RECOVERY = """
SELECT rc.* FROM {s}.recoveries rc
WHERE rc.state = 'running' AND NOT rc.scanned
  AND (SELECT count(*) FROM {s}.replays r
       JOIN {s}.deliveries d ON d.id = r.delivery_id
       JOIN {s}.endpoints e ON e.id = d.endpoint_id
       WHERE r.recovery_id = rc.id AND r.state = 'pending' AND e.enabled
         AND (e.breaker_open_until IS NULL OR e.breaker_open_until <= :now)) < :limit
ORDER BY rc.updated_at
LIMIT 1
FOR UPDATE OF rc SKIP LOCKED
"""
# The next events after the cursor, by creation time then id.
EVENT_PAGE = (
    """
SELECT ev.id, ev.created_at FROM {s}.events ev
WHERE """
    + _EVENTS
    + """
  AND (ev.created_at, ev.id) > (coalesce(CAST(:after_at AS timestamptz), '-infinity'),
                                coalesce(CAST(:after_id AS text), ''))
ORDER BY ev.created_at, ev.id
LIMIT :limit
"""
)
# Deliveries for the events an endpoint never had one for (created later, or its filter
# excluded them then), in the event's project and mode (the foreign keys insist). They start
# `failed` with no attempt: the schedule owes them nothing (their window passed unopened),
# and their replay, like any replay, settles them as succeeded or leaves them as they are.
ROUTE_MISSING = (
    """
INSERT INTO {s}.deliveries
    (id, event_id, endpoint_id, project_id, mode, state, next_attempt_at, created_at, updated_at)
SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), ev.id, e.id, ev.project_id,
       ev.mode, 'failed', NULL, :now, :now
FROM {s}.events ev
JOIN {s}.endpoints e ON e.project_id = ev.project_id AND e.mode = ev.mode
    AND e.deleted_at IS NULL AND (CAST(:endpoint_id AS text) IS NULL OR e.id = :endpoint_id)
WHERE ev.id = ANY (CAST(:event_ids AS text[])) AND """
    + _SUBSCRIBED
    + """
  AND NOT EXISTS (SELECT 1 FROM {s}.deliveries d WHERE d.event_id = ev.id AND d.endpoint_id = e.id)
ON CONFLICT (event_id, endpoint_id) DO NOTHING
RETURNING id
"""
)
# A delivery that already has a replay pending or in flight (queued by hand, or by another
# recovery) is not queued again: `replays_live` is unique.
QUEUE_BATCH = """
INSERT INTO {s}.replays (delivery_id, requested_at, due_at, recovery_id)
SELECT d.id, :now, :now, :recovery_id FROM {s}.deliveries d
JOIN {s}.endpoints e ON e.id = d.endpoint_id AND e.deleted_at IS NULL
WHERE d.event_id = ANY (CAST(:event_ids AS text[]))
  AND (CAST(:endpoint_id AS text) IS NULL OR d.endpoint_id = :endpoint_id)
  AND ((CAST(:delivery_state AS text) IS NULL OR d.state = :delivery_state)
       OR d.id = ANY (CAST(:created AS text[])))
ORDER BY d.created_at, d.id
ON CONFLICT (delivery_id) WHERE state IN ('pending', 'delivering') DO NOTHING
"""
# The cursor moves in the transaction that queued the batch. Once every event has been
# looked at, `total` becomes what was really queued.
ADVANCE_CURSOR = """
UPDATE {s}.recoveries SET cursor_at = :cursor_at, cursor_id = :cursor_id, scanned = :scanned,
    updated_at = :now,
    total = CASE WHEN :scanned THEN (SELECT count(*) FROM {s}.replays
                                     WHERE recovery_id = :id AND state <> 'cancelled')
            ELSE total END
WHERE id = :id
"""
FINISH_RECOVERIES = """
UPDATE {s}.recoveries rc SET state = 'done', finished_at = :now, updated_at = :now
WHERE rc.state = 'running' AND rc.scanned
  AND NOT EXISTS (SELECT 1 FROM {s}.replays r
                  WHERE r.recovery_id = rc.id AND r.state IN ('pending', 'delivering'))
"""
CANCEL_RECOVERY = """
UPDATE {s}.recoveries SET state = 'cancelled', finished_at = :now, updated_at = :now
WHERE id = :id AND state = 'running'
"""
# Replays not yet claimed are dropped; one already claimed is on the wire and is recorded.
DROP_UNSENT = """
UPDATE {s}.replays SET state = 'cancelled'
WHERE recovery_id = :id AND state = 'pending'
"""
# Progress from real outcomes: a replay's `outcome` is set when its attempt is recorded.
# Held: queued, not sendable now (endpoint disabled, or its breaker open).
# A recovery's progress, counted from its replays. ``{recoveries}`` is where its rows come
# from: the table, or a page of it (the counts are read per row of that page, in its order).
_STATUS_OF = """
SELECT rc.id, rc.project_id, rc.mode, rc.endpoint_id, rc.state, rc.total, rc.scanned,
       rc.since, rc.until, rc.delivery_state, rc.event_type, rc.include_unrouted,
       rc.created_at, rc.finished_at, c.queued, c.sent, c.succeeded, c.failed, c.held
FROM {recoveries} rc
CROSS JOIN LATERAL (
    SELECT count(r.id) FILTER (WHERE r.state <> 'cancelled') AS queued,
           count(r.id) FILTER (WHERE r.outcome IS NOT NULL) AS sent,
           count(r.id) FILTER (WHERE r.outcome = 'succeeded') AS succeeded,
           count(r.id) FILTER (WHERE r.outcome = 'failed') AS failed,
           count(r.id) FILTER (WHERE r.state = 'pending'
                               AND (NOT e.enabled OR e.breaker_open_until > :now)) AS held
    FROM {s}.replays r
    LEFT JOIN {s}.deliveries d ON d.id = r.delivery_id
    LEFT JOIN {s}.endpoints e ON e.id = d.endpoint_id
    WHERE r.recovery_id = rc.id
) c
"""
STATUS = _STATUS_OF.replace("{recoveries}", "{s}.recoveries") + "WHERE rc.id = :id"


def recoveries_status(page: str) -> str:
    """The progress of each recovery a query of recovery rows (``page``) gives, in one
    statement, in that query's order."""
    return _STATUS_OF.replace("{recoveries}", f"({page})")


RECOVERY_STATES = ("failed", "all")


@dataclass(frozen=True)
class RecoverySelection:
    """What a recovery replays: events of one project and mode created in [since, until).

    Args:
        endpoint_id: only this endpoint's deliveries (None: every endpoint of the project
            and mode).
        delivery_state: only deliveries in this state (None: all).
        event_type: only events of this type, exact or ``prefix.*`` (None: all).
        include_unrouted: also send events the endpoint never had a delivery for.
    """

    project_id: str
    mode: Mode
    since: datetime
    until: datetime
    endpoint_id: str | None = None
    delivery_state: str | None = None
    event_type: str | None = None
    include_unrouted: bool = False

    def params(self) -> dict[str, Any]:
        """The bind parameters of the selection's SQL."""
        return {
            "project_id": self.project_id,
            "mode": self.mode,
            "since": self.since,
            "until": self.until,
            "endpoint_id": self.endpoint_id,
            "delivery_state": self.delivery_state,
            "event_type": self.event_type,
            "include_unrouted": self.include_unrouted,
        }


@dataclass(frozen=True)
class Recovery:
    """A recovery and its progress, counted from the attempts its replays made."""

    id: str
    project_id: str
    mode: str
    endpoint_id: str | None
    state: str
    total: int
    queued: int
    sent: int
    succeeded: int
    failed: int
    held: int
    created_at: datetime
    finished_at: datetime | None

    @property
    def is_finished(self) -> bool:
        """Done or cancelled: nothing more will be sent for it."""
        return self.state != "running"

    def to_json(self) -> dict[str, Any]:
        """The `recover --json` / `recover status --json` shape."""
        return {
            "id": self.id,
            "state": self.state,
            "total": self.total,
            "queued": self.queued,
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "held": self.held,
            "project_id": self.project_id,
            "mode": self.mode,
            "endpoint_id": self.endpoint_id,
            "created_at": rfc3339(self.created_at),
            "finished_at": rfc3339(self.finished_at),
        }


def check_selection(
    conn: Connection, settings: Settings, selection: RecoverySelection
) -> RecoverySelection:
    """Validate a selection; with an endpoint, its project and mode must be the endpoint's."""
    validate_project_id(selection.project_id)
    validate_mode(selection.mode)
    if selection.until <= selection.since:
        raise InvalidArgument("--until must be later than --since")
    if selection.delivery_state is not None and selection.delivery_state not in DELIVERY_STATES:
        raise InvalidArgument(
            f"state {selection.delivery_state!r} is not a delivery state; use one of "
            + ", ".join(DELIVERY_STATES)
        )
    if selection.event_type is not None:
        validate_filters([selection.event_type])
    if selection.endpoint_id is not None:
        endpoint = get_endpoint(conn, settings, selection.endpoint_id)
        if (endpoint.project_id, endpoint.mode) != (selection.project_id, selection.mode):
            raise InvalidArgument(
                f"endpoint {endpoint.id} belongs to {endpoint.project_id} ({endpoint.mode} "
                f"mode), not {selection.project_id} ({selection.mode} mode); recoveries never "
                "cross projects or modes"
            )
    return selection


def count_selection(conn: Connection, settings: Settings, selection: RecoverySelection) -> int:
    """How many replays the selection would queue now (a dry run)."""
    check_selection(conn, settings, selection)
    value = conn.execute(sql(COUNT_SELECTION, settings.db_schema), selection.params())
    return int(value.scalar_one())


def create_recovery(
    conn: Connection, settings: Settings, selection: RecoverySelection, now: datetime
) -> Recovery:
    """Store a recovery for the dispatchers to carry out; return it as it starts."""
    total = count_selection(conn, settings, selection)
    recovery_id = new_id("rec")
    conn.execute(
        sql(INSERT_RECOVERY, settings.db_schema),
        {**selection.params(), "id": recovery_id, "total": total, "now": now},
    )
    notify_dispatchers(conn, settings, RECOVERIES_CREATED)
    return get_recovery(conn, settings, recovery_id, now)


def get_recovery(conn: Connection, settings: Settings, recovery_id: str, now: datetime) -> Recovery:
    """A recovery with its progress; `RecoveryNotFound` if there is none."""
    row = conn.execute(
        sql(STATUS, settings.db_schema), {"id": recovery_id, "now": now}
    ).one_or_none()
    if row is None:
        raise RecoveryNotFound(recovery_id)
    return recovery_from_row(row)


def recovery_from_row(row: Any) -> Recovery:
    """A recovery from a row of `STATUS` (or `RECOVERY_STATUS_OF`)."""
    return Recovery(
        id=row.id,
        project_id=row.project_id,
        mode=row.mode,
        endpoint_id=row.endpoint_id,
        state=row.state,
        # An estimate while events remain to be looked at; exact afterwards.
        total=row.total if row.scanned else max(row.total, row.queued),
        queued=row.queued,
        sent=row.sent,
        succeeded=row.succeeded,
        failed=row.failed,
        held=row.held,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def cancel_recovery(
    conn: Connection, settings: Settings, recovery_id: str, now: datetime
) -> Recovery:
    """Stop a recovery: its replays not yet sent are dropped. A finished one is left as it is."""
    get_recovery(conn, settings, recovery_id, now)
    if conn.execute(
        sql(CANCEL_RECOVERY, settings.db_schema), {"id": recovery_id, "now": now}
    ).rowcount:
        conn.execute(sql(DROP_UNSENT, settings.db_schema), {"id": recovery_id})
    return get_recovery(conn, settings, recovery_id, now)


def advance_recoveries(engine: Engine, settings: Settings, now: datetime) -> int:
    """Queue one batch of one running recovery, and mark finished ones done.

    One short transaction. Returns how many replays were queued (0: nothing to do now).
    """
    schema = settings.db_schema
    limit = settings.recovery_batch_size
    with engine.begin() as conn:
        queued = 0
        row = conn.execute(sql(PICK_RECOVERY, schema), {"now": now, "limit": limit}).one_or_none()
        if row is not None:
            queued = _queue_batch(conn, settings, row, now, limit)
        conn.execute(sql(FINISH_RECOVERIES, schema), {"now": now})
    return queued


def _queue_batch(conn: Connection, settings: Settings, row: Any, now: datetime, limit: int) -> int:
    schema = settings.db_schema
    params: dict[str, Any] = {
        "project_id": row.project_id,
        "mode": row.mode,
        "since": row.since,
        "until": row.until,
        "endpoint_id": row.endpoint_id,
        "delivery_state": row.delivery_state,
        "event_type": row.event_type,
        "after_at": row.cursor_at,
        "after_id": row.cursor_id,
        "limit": limit,
        "now": now,
        "recovery_id": row.id,
    }
    page = conn.execute(sql(EVENT_PAGE, schema), params).all()
    params["event_ids"] = [event.id for event in page]
    # An event committed moments ago gets its deliveries first, as a dispatcher would give
    # them, so the rules below see them and `include_unrouted` adds none of its own.
    expand_events(conn, settings, params["event_ids"])
    created: list[str] = []
    if page and row.include_unrouted:
        created = list(conn.execute(sql(ROUTE_MISSING, schema), params).scalars())
    queued = 0
    if page:
        queued = int(
            conn.execute(sql(QUEUE_BATCH, schema), {**params, "created": created}).rowcount
        )
        notify_dispatchers(conn, settings, REPLAYS_QUEUED)
    last = page[-1] if page else None
    conn.execute(
        sql(ADVANCE_CURSOR, schema),
        {
            "id": row.id,
            "cursor_at": last.created_at if last else row.cursor_at,
            "cursor_id": last.id if last else row.cursor_id,
            "scanned": len(page) < limit,
            "now": now,
        },
    )
    return queued
