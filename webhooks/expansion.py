"""Expansion: an event committed by `publish` becomes its deliveries, after the commit.

`publish` writes the event row alone (the outbox entry), so its cost does not grow with the
number of endpoints listening. The dispatchers call `Expander.run` every round before
claiming: it takes a batch of unexpanded events (``FOR UPDATE SKIP LOCKED``: several
dispatchers share the work and never wait for each other), writes their deliveries and marks
them expanded, all in one statement and one transaction, so each event is expanded exactly
once, and a rolled-back publish is never seen at all.

The rules are those of the old in-transaction fan-out, applied at expansion time (normally
milliseconds after the commit): every endpoint of the event's project and mode, not deleted,
whose filter (`event_types.SUBSCRIBED_SQL`) matches; a disabled one gets its delivery held
(no due time) until it is enabled; ``only_endpoint`` (a simulated event sent on purpose) goes
to that one endpoint whatever its filter. An endpoint created after the commit but before the
expansion gets the event; one created after the expansion does not (a recovery with
``--include-unrouted`` sends it). ``ON CONFLICT DO NOTHING`` on ``(event_id, endpoint_id)``
keeps any delivery that already exists (a recovery that routed the event first) as it is.

Commands that need an event's deliveries at once (a replay, a recovery's batch, `webhooks
trigger` reporting its count) call `expand_events` for it: the same statement, on the named
events, waiting for a dispatcher that holds one to commit instead of skipping it.

The dispatchers commit without waiting for the disk (see `database.create_engine`). A crash
that forgets an expansion forgets the claims and sends that followed it too; the event is
expanded again into new delivery rows, and any request already sent carries the same
``webhook-id`` (the event id), as every resend does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from webhooks import clock
from webhooks.database import sql
from webhooks.event_types import SUBSCRIBED_SQL
from webhooks.settings import Settings

# At most this many events per batch, and a batch sized to write about this many deliveries:
# one event to 5,000 endpoints is a batch of its own, a thousand events to one endpoint each
# take ten batches. Each batch is one short transaction holding the locks of its events only.
MAX_EVENTS_PER_BATCH = 100
DELIVERIES_PER_BATCH = 5_000
# A round stops starting batches after this long, so the claims of the same round (and the
# due work of every other event) are not starved by a burst of publishes; `run` then says
# more is left and the dispatcher comes back at once.
ROUND_BUDGET = 0.1

_ROUTE = (
    """
, fan_out AS (
    INSERT INTO {s}.deliveries
        (id, event_id, endpoint_id, project_id, mode, state, next_attempt_at, created_at,
         updated_at)
    SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), ev.id, e.id, ev.project_id,
           ev.mode, 'pending', CASE WHEN e.enabled THEN :now END, :now, :now
    FROM batch ev
    JOIN {s}.endpoints e ON e.project_id = ev.project_id AND e.mode = ev.mode
        AND e.deleted_at IS NULL
    WHERE CASE WHEN ev.only_endpoint IS NOT NULL THEN e.id = ev.only_endpoint
          ELSE """
    + SUBSCRIBED_SQL
    + """ END
    ON CONFLICT (event_id, endpoint_id) DO NOTHING
    RETURNING next_attempt_at
), marked AS (
    UPDATE {s}.events ev SET expanded_at = :now FROM batch WHERE ev.id = batch.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS events, (SELECT count(*) FROM fan_out) AS deliveries,
       (SELECT count(*) FROM fan_out WHERE next_attempt_at IS NOT NULL) AS due
"""
)
# The oldest unexpanded events no other dispatcher holds (the partial index
# ``events_unexpanded`` holds only these, however many events are stored).
EXPAND_PENDING = (
    """
WITH batch AS (
    SELECT id, project_id, mode, type, only_endpoint FROM {s}.events
    WHERE expanded_at IS NULL
    ORDER BY created_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)"""
    + _ROUTE
)
# Named events, waiting for a dispatcher expanding one of them to commit: the row is then
# re-read, found expanded and left out, and the caller's next statement sees its deliveries.
# Locked in id order, so two callers naming the same events never deadlock.
EXPAND_NAMED = (
    """
WITH batch AS (
    SELECT id, project_id, mode, type, only_endpoint FROM {s}.events
    WHERE id = ANY (CAST(:event_ids AS text[])) AND expanded_at IS NULL
    ORDER BY id
    FOR UPDATE
)"""
    + _ROUTE
)
COUNT_DELIVERIES = "SELECT count(*) FROM {s}.deliveries WHERE event_id = :event_id"
AWAITING = """
SELECT count(*) AS n, min(created_at) AS oldest FROM {s}.events WHERE expanded_at IS NULL
"""


@dataclass(frozen=True)
class Expanded:
    """What a round or a call expanded: events, deliveries written, how many of those are
    due now (not held), and whether unexpanded events were left for the next round."""

    events: int = 0
    deliveries: int = 0
    due: int = 0
    more: bool = False

    def __add__(self, other: Expanded) -> Expanded:
        return Expanded(
            self.events + other.events,
            self.deliveries + other.deliveries,
            self.due + other.due,
            other.more,
        )


def expand_batch(conn: Connection, settings: Settings, limit: int) -> Expanded:
    """Expand up to ``limit`` of the oldest unexpanded events no one else holds, in the
    caller's transaction (its commit releases them)."""
    row = conn.execute(
        sql(EXPAND_PENDING, settings.db_schema), {"limit": limit, "now": clock.now()}
    ).one()
    return Expanded(int(row.events), int(row.deliveries), int(row.due), row.events >= limit)


def expand_events(conn: Connection, settings: Settings, event_ids: Sequence[str]) -> Expanded:
    """Expand the named events now, in the caller's transaction, unless they already are."""
    if not event_ids:
        return Expanded()
    row = conn.execute(
        sql(EXPAND_NAMED, settings.db_schema),
        {"event_ids": sorted(set(event_ids)), "now": clock.now()},
    ).one()
    return Expanded(int(row.events), int(row.deliveries), int(row.due))


def expand_event(conn: Connection, settings: Settings, event_id: str) -> int:
    """Expand one event now unless a dispatcher already has; return how many deliveries it
    has (for `webhooks trigger` to say where it went)."""
    expand_events(conn, settings, [event_id])
    return int(
        conn.execute(sql(COUNT_DELIVERIES, settings.db_schema), {"event_id": event_id}).scalar_one()
    )


@dataclass(frozen=True)
class Awaiting:
    """Events committed and not yet expanded, and the creation time of the oldest."""

    events: int
    oldest_age_seconds: float | None


def awaiting_expansion(
    conn: Connection, settings: Settings, now: datetime | None = None
) -> Awaiting:
    """How many events wait for expansion and how long the oldest has (a stuck expansion is
    an old one: no dispatcher running, or one failing on every batch). Event times are kept
    to the second, so a fresh event may show up to a second old."""
    row = conn.execute(sql(AWAITING, settings.db_schema)).one()
    if row.oldest is None:
        return Awaiting(int(row.n), None)
    age = max(((now or clock.now()) - row.oldest).total_seconds(), 0.0)
    return Awaiting(int(row.n), round(age, 3))


class Expander:
    """A dispatcher's expansion rounds: batches sized from the deliveries the last one wrote."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.settings = settings
        self.limit = MAX_EVENTS_PER_BATCH

    def run(self, budget: float = ROUND_BUDGET) -> Expanded:
        """Expand batches, each in its own transaction, until none is left or ``budget``
        seconds are spent."""
        started = time.monotonic()
        total = Expanded()
        while True:
            # One statement is its own transaction: without BEGIN and COMMIT a batch is one
            # round trip, not three (most rounds of a steady stream expand one or two events).
            with self._autocommit.connect() as conn:
                batch = expand_batch(conn, self.settings, self.limit)
            total += batch
            if batch.events:
                per_event = max(batch.deliveries / batch.events, 1.0)
                self.limit = max(
                    1, min(MAX_EVENTS_PER_BATCH, int(DELIVERIES_PER_BATCH / per_event))
                )
            if not batch.more or time.monotonic() - started >= budget:
                return total
