"""Retention: delete old attempts and finished events in short batches, never live work.

`prune` runs in two phases, each a series of batches, each batch its own short transaction
(so no lock is held for longer than one batch, and a prune that is stopped half-way has
deleted whole batches and resumes by simply running again):

1. **attempts** older than the cutoff, walked oldest first by keyset over
   ``(started_at, id)``. Attempts are the bulky rows (headers, response bodies) and an event
   may have hundreds of them, so they go first, ``batch_size`` rows at a time.
2. **events** older than the cutoff, with their deliveries, replays and remaining attempts,
   ``batch_size`` events at a time.
3. **recoveries** that finished (done or cancelled) before the cutoff, ``batch_size`` at a
   time; a running recovery is never deleted, however old. Replays that remain keep their
   outcome and lose only the link (``ON DELETE SET NULL``).
4. **the HTTP API's rows**: answers kept for an ``Idempotency-Key`` once older than
   `IDEMPOTENCY_KEPT_FOR` (24 h, whatever the cutoff: the key then starts again anyway),
   API keys revoked or expired before the cutoff (never usable again; a key rotated from
   one keeps working and loses only the link), portal sessions whose link and session
   expired or were revoked before the cutoff (an old link then reads as unknown rather than
   expired: both refuse it), and rate-limit windows that ended a day ago.

Either phase deletes rows of an event only if the event is *settled*: it is expanded (its
deliveries are written, see `expansion`), every one of its deliveries is ``succeeded``,
``failed`` or ``cancelled`` and none has a ``pending`` or ``delivering`` replay. An event
awaiting expansion, with a live delivery (in flight, scheduled, or held by a disabled
endpoint) or with a live replay is left whole, however old. To make that check
race-free, a batch first locks the finished deliveries of its events (``FOR UPDATE SKIP
LOCKED``: a row somebody else holds is simply not settled this time), then reads, in a fresh
statement, how many deliveries each event has and which have live replays. A locked delivery
cannot gain a replay (the replay's foreign-key check waits for the lock, then finds the row
gone) and a finished delivery never becomes live again, so what the batch deletes was
settled when it was deleted.

Vacuum settings of the hot tables (autovacuum vacuums a table once its dead rows exceed
``autovacuum_vacuum_threshold + autovacuum_vacuum_scale_factor * rows``; the defaults are
50 and 0.2):

- **deliveries** (migration 0001: ``scale_factor = 0, threshold = 1000``). Every delivery is
  updated several times (claimed, leased, recorded, rescheduled), so it makes dead rows at the
  delivery rate, and the dispatcher's claim and reap queries scan the partial indexes
  ``deliveries_due`` and ``deliveries_lease``, which stay small only if dead entries are
  cleaned. With the default 20 %, a table of 10 M rows would wait for 2 M dead rows before a
  vacuum, and every claim would step over them. A fixed threshold vacuums after every 1,000
  dead rows whatever the table's size; that is cheap because the visibility map lets vacuum
  skip the all-visible history.
- **replays** (migration 0006: the same, for the same reason: pending → delivering → done,
  scanned through the partial indexes ``replays_due`` and ``replays_lease``).
- **attempts** and **events** (migration 0006: ``vacuum_scale_factor = 0.02``,
  ``vacuum_insert_scale_factor = 0.05``, ``analyze_scale_factor = 0.02``). They are
  append-only: their only dead rows come from this prune. A daily prune with 30 days'
  retention deletes about 3 % of the rows, under the default 20 %, so without the change
  vacuum would wait about a week and the table would grow by a week of history before space
  is reused. A fixed small threshold would be wrong here: each vacuum also scans every index
  in full, which is costly on the largest table, so a small *fraction* is used instead. The
  insert scale factor makes autovacuum freeze and mark new pages all-visible as they
  accumulate, so anti-wraparound vacuums stay small and index-only scans stay possible.

Migration 0006 also adds ``attempts (started_at, id)``, which phase 1 walks, and
``replays (delivery_id)``, without which every deleted delivery's cascade would scan the
whole replays table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from webhooks import clock
from webhooks.database import sql
from webhooks.errors import InvalidArgument
from webhooks.models import rfc3339
from webhooks.settings import Settings

# The smallest key, to start a keyset walk from.
_START = datetime(1, 1, 1, tzinfo=UTC)

# Oldest first, one batch past the last key seen. Rows of live events are skipped and the
# walk moves past them, so every batch makes progress even when nothing in it may go.
ATTEMPT_PAGE = """
SELECT id, event_id, started_at FROM {s}.attempts
WHERE started_at < :cutoff AND (started_at, id) > (:after_at, :after_id)
ORDER BY started_at, id
LIMIT :limit
"""
# An event not yet expanded has no deliveries, which would make it look settled: it is
# live work (its deliveries are yet to be written), so it is never a candidate.
EVENT_PAGE = """
SELECT id, created_at FROM {s}.events
WHERE created_at < :cutoff AND (created_at, id) > (:after_at, :after_id)
  AND expanded_at IS NOT NULL
ORDER BY created_at, id
LIMIT :limit
"""

# Locking the finished deliveries freezes them for the rest of the batch: no replay can be
# queued for them (its foreign-key check waits) until the batch has committed. SKIP LOCKED:
# a delivery somebody holds is busy, hence not settled now; never wait for it.
LOCK_FINISHED = """
SELECT id, event_id FROM {s}.deliveries
WHERE event_id = ANY (CAST(:event_ids AS text[]))
  AND state IN ('succeeded', 'failed', 'cancelled')
FOR UPDATE SKIP LOCKED
"""
LIST_FINISHED = """
SELECT id, event_id FROM {s}.deliveries
WHERE event_id = ANY (CAST(:event_ids AS text[]))
  AND state IN ('succeeded', 'failed', 'cancelled')
"""
# Read after the lock, in a new statement (a new snapshot under READ COMMITTED).
DELIVERY_COUNTS = """
SELECT event_id, count(*) AS n FROM {s}.deliveries
WHERE event_id = ANY (CAST(:event_ids AS text[]))
GROUP BY event_id
"""
LIVE_REPLAYS = """
SELECT DISTINCT d.event_id FROM {s}.replays r
JOIN {s}.deliveries d ON d.id = r.delivery_id
WHERE d.event_id = ANY (CAST(:event_ids AS text[])) AND r.state IN ('pending', 'delivering')
"""

DELETE_ATTEMPTS = "DELETE FROM {s}.attempts WHERE id = ANY (CAST(:ids AS bigint[]))"
# Children first, so each count is reported; the cascades then find nothing left to do.
DELETE_EVENT_ATTEMPTS = "DELETE FROM {s}.attempts WHERE event_id = ANY (CAST(:event_ids AS text[]))"
DELETE_EVENT_REPLAYS = """
DELETE FROM {s}.replays r USING {s}.deliveries d
WHERE r.delivery_id = d.id AND d.event_id = ANY (CAST(:event_ids AS text[]))
"""
DELETE_EVENT_DELIVERIES = (
    "DELETE FROM {s}.deliveries WHERE event_id = ANY (CAST(:event_ids AS text[]))"
)
DELETE_EVENTS = "DELETE FROM {s}.events WHERE id = ANY (CAST(:event_ids AS text[]))"
FINISHED_RECOVERIES = """
SELECT id FROM {s}.recoveries
WHERE state <> 'running' AND finished_at < :cutoff
ORDER BY finished_at, id
LIMIT :limit
"""
DELETE_RECOVERIES = "DELETE FROM {s}.recoveries WHERE id = ANY (CAST(:ids AS text[]))"
# Dry run: what phase 2 would delete. Attempts older than the cutoff are phase 1's count.
COUNT_EVENT_ROWS = """
SELECT
  (SELECT count(*) FROM {s}.attempts
   WHERE event_id = ANY (CAST(:event_ids AS text[])) AND started_at >= :cutoff) AS attempts,
  (SELECT count(*) FROM {s}.replays r JOIN {s}.deliveries d ON d.id = r.delivery_id
   WHERE d.event_id = ANY (CAST(:event_ids AS text[]))) AS replays,
  (SELECT count(*) FROM {s}.deliveries
   WHERE event_id = ANY (CAST(:event_ids AS text[]))) AS deliveries
"""

# A batch never queues behind another transaction for long: it fails instead, and the next
# run carries on where this one stopped.
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"

# How long the API keeps the first answer to an ``Idempotency-Key``.
IDEMPOTENCY_KEPT_FOR = timedelta(hours=24)
# A live key's rate-limit row is rewritten every window; one untouched for a day is a dead
# key's (or the Cloud API's key that stopped calling).
RATE_LIMIT_KEPT_FOR = timedelta(days=1)
_EXPIRED_IDEMPOTENCY = """
SELECT project_id, mode, idempotency_key FROM {s}.api_idempotency
WHERE created_at < :before LIMIT :limit"""
_RETIRED_KEYS = """
SELECT id FROM {s}.api_keys WHERE revoked_at < :cutoff OR expires_at < :cutoff LIMIT :limit"""
_ENDED_PORTAL_SESSIONS = """
SELECT id FROM {s}.portal_sessions WHERE revoked_at < :cutoff OR expires_at < :cutoff
LIMIT :limit"""
_STALE_WINDOWS = """
SELECT key_id FROM {s}.api_rate_limits WHERE window_start < :stale LIMIT :limit"""
# Each statement of a batch: the rows deleted, or with ``dry_run``, counted.
API_ROWS = {
    "idempotency": (
        "DELETE FROM {s}.api_idempotency WHERE (project_id, mode, idempotency_key) IN ("
        + _EXPIRED_IDEMPOTENCY
        + ")",
        "SELECT count(*) FROM {s}.api_idempotency WHERE created_at < :before",
    ),
    "api_keys": (
        "DELETE FROM {s}.api_keys WHERE id IN (" + _RETIRED_KEYS + ")",
        "SELECT count(*) FROM {s}.api_keys WHERE revoked_at < :cutoff OR expires_at < :cutoff",
    ),
    "portal_sessions": (
        "DELETE FROM {s}.portal_sessions WHERE id IN (" + _ENDED_PORTAL_SESSIONS + ")",
        "SELECT count(*) FROM {s}.portal_sessions "
        "WHERE revoked_at < :cutoff OR expires_at < :cutoff",
    ),
    "rate_limits": (
        "DELETE FROM {s}.api_rate_limits WHERE key_id IN (" + _STALE_WINDOWS + ")",
        "SELECT count(*) FROM {s}.api_rate_limits WHERE window_start < :stale",
    ),
}


@dataclass(frozen=True)
class PruneReport:
    """What a prune deleted (or, in a dry run, would delete), and how long it took.

    ``longest_batch`` is the longest single transaction: the longest any lock was held.
    """

    cutoff: datetime
    attempts: int = 0
    events: int = 0
    deliveries: int = 0
    replays: int = 0
    recoveries: int = 0
    idempotency: int = 0
    api_keys: int = 0
    portal_sessions: int = 0
    rate_limits: int = 0
    batches: int = 0
    elapsed: timedelta = timedelta(0)
    longest_batch: timedelta = timedelta(0)
    phase: str = "attempts"
    dry_run: bool = False

    def summary(self) -> str:
        """One line for humans, e.g. for the CLI's final message."""
        verb = "would delete" if self.dry_run else "deleted"
        api = ""
        if self.idempotency or self.api_keys or self.portal_sessions:
            api = (
                f" (and {self.api_keys} revoked or expired API keys, {self.portal_sessions} "
                f"ended portal sessions, {self.idempotency} Idempotency-Key answers past 24 h)"
            )
        return (
            f"{verb} {self.attempts} attempts, {self.events} events, {self.deliveries} "
            f"deliveries, {self.replays} replays, {self.recoveries} recoveries older than "
            f"{rfc3339(self.cutoff)}{api} in "
            f"{self.batches} batches, {self.elapsed.total_seconds():.2f}s "
            f"(longest batch {self.longest_batch.total_seconds() * 1000:.0f} ms)"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``): counts, times in seconds."""
        return {
            "cutoff": rfc3339(self.cutoff),
            "attempts": self.attempts,
            "events": self.events,
            "deliveries": self.deliveries,
            "replays": self.replays,
            "recoveries": self.recoveries,
            "idempotency": self.idempotency,
            "api_keys": self.api_keys,
            "portal_sessions": self.portal_sessions,
            "rate_limits": self.rate_limits,
            "batches": self.batches,
            "elapsed_seconds": round(self.elapsed.total_seconds(), 3),
            "longest_batch_seconds": round(self.longest_batch.total_seconds(), 3),
            "dry_run": self.dry_run,
        }


def settled_events(
    event_ids: Iterable[str],
    delivery_counts: Mapping[str, int],
    finished_counts: Mapping[str, int],
    live_replays: Collection[str],
) -> set[str]:
    """The events that may be deleted: every delivery finished (and held), no live replay.

    Args:
        event_ids: the candidates.
        delivery_counts: how many deliveries each event has (absent: none).
        finished_counts: how many of them are finished and locked by this batch.
        live_replays: events with a pending or delivering replay.
    """
    return {
        event_id
        for event_id in event_ids
        if finished_counts.get(event_id, 0) == delivery_counts.get(event_id, 0)
        and event_id not in live_replays
    }


def prune(
    engine: Engine,
    settings: Settings,
    *,
    older_than: timedelta,
    batch_size: int = 5000,
    now: datetime | None = None,
    dry_run: bool = False,
    on_progress: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete attempts and settled events older than ``older_than``, finished recoveries, and
    the HTTP API's expired rows (phase 4 of the module docstring), in short batches.

    Safe to run at any time, alongside the dispatcher and workers, from several places at
    once, and again after being interrupted: each batch commits on its own.

    Args:
        engine: the webhooks database.
        settings: for the schema.
        older_than: rows older than ``now - older_than`` go (attempts by ``started_at``,
            events by ``created_at``).
        batch_size: rows (phase 1) or events (phase 2) per transaction.
        now: the reference time; the clock's by default.
        dry_run: count what would be deleted, delete nothing, lock nothing.
        on_progress: called with the running totals after every batch.
    """
    if older_than <= timedelta(0):
        raise InvalidArgument(f"--older-than must be positive, not {older_than}")
    if batch_size < 1:
        raise InvalidArgument(f"--batch-size must be at least 1, not {batch_size}")
    cutoff = (now or clock.now()) - older_than
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    started = time.monotonic()

    def progress(batch_started: float, **deltas: int) -> None:
        nonlocal report
        counts = {key: getattr(report, key) + value for key, value in deltas.items()}
        report = replace(
            report,
            **counts,
            batches=report.batches + 1,
            elapsed=timedelta(seconds=time.monotonic() - started),
            longest_batch=max(
                report.longest_batch, timedelta(seconds=time.monotonic() - batch_started)
            ),
        )
        if on_progress is not None:
            on_progress(report)

    after: tuple[datetime, Any] = (_START, 0)
    while True:
        t0 = time.monotonic()
        with engine.begin() as conn:
            rows = _page(conn, settings, ATTEMPT_PAGE, cutoff, after, batch_size)
            if not rows:
                break
            settled = _settle(conn, settings, {row.event_id for row in rows}, lock=not dry_run)
            ids = [row.id for row in rows if row.event_id in settled]
            deleted = len(ids)
            if ids and not dry_run:
                deleted = conn.execute(
                    sql(DELETE_ATTEMPTS, settings.db_schema), {"ids": ids}
                ).rowcount
        after = (rows[-1].started_at, rows[-1].id)
        progress(t0, attempts=deleted)

    report = replace(report, phase="events")
    after = (_START, "")
    while True:
        t0 = time.monotonic()
        with engine.begin() as conn:
            rows = _page(conn, settings, EVENT_PAGE, cutoff, after, batch_size)
            if not rows:
                break
            settled = _settle(conn, settings, {row.id for row in rows}, lock=not dry_run)
            counts = _delete_events(conn, settings, sorted(settled), cutoff, dry_run=dry_run)
        after = (rows[-1].created_at, rows[-1].id)
        progress(t0, **counts)

    report = replace(report, phase="recoveries")
    seen: set[str] = set()  # a dry run deletes nothing: page past what it counted
    while True:
        t0 = time.monotonic()
        with engine.begin() as conn:
            conn.execute(sql(LOCK_TIMEOUT, settings.db_schema))
            ids = [
                row.id
                for row in conn.execute(
                    sql(FINISHED_RECOVERIES, settings.db_schema),
                    {"cutoff": cutoff, "limit": batch_size + len(seen)},
                )
                if row.id not in seen
            ]
            if not ids:
                break
            if dry_run:
                seen.update(ids)
            else:
                conn.execute(sql(DELETE_RECOVERIES, settings.db_schema), {"ids": ids})
        progress(t0, recoveries=len(ids))

    report = replace(report, phase="api")
    reference = now or clock.now()
    params = {
        "before": reference - IDEMPOTENCY_KEPT_FOR,
        "cutoff": cutoff,
        "stale": reference - RATE_LIMIT_KEPT_FOR,
        "limit": batch_size,
    }
    for kind, (delete, count) in API_ROWS.items():
        while True:
            t0 = time.monotonic()
            with engine.begin() as conn:
                conn.execute(sql(LOCK_TIMEOUT, settings.db_schema))
                statement = count if dry_run else delete
                result = conn.execute(sql(statement, settings.db_schema), params)
                gone = int(result.scalar_one()) if dry_run else result.rowcount
            if gone:
                progress(t0, **{kind: gone})
            if dry_run or gone < batch_size:
                break

    return replace(report, phase="done", elapsed=timedelta(seconds=time.monotonic() - started))


def _page(
    conn: Connection,
    settings: Settings,
    statement: str,
    cutoff: datetime,
    after: tuple[datetime, Any],
    limit: int,
) -> list[Any]:
    conn.execute(sql(LOCK_TIMEOUT, settings.db_schema))
    params = {"cutoff": cutoff, "after_at": after[0], "after_id": after[1], "limit": limit}
    return list(conn.execute(sql(statement, settings.db_schema), params))


def _settle(conn: Connection, settings: Settings, event_ids: set[str], *, lock: bool) -> set[str]:
    """Lock the finished deliveries of ``event_ids``; return the events that are settled."""
    schema = settings.db_schema
    params = {"event_ids": sorted(event_ids)}
    finished: dict[str, int] = {}
    for row in conn.execute(sql(LOCK_FINISHED if lock else LIST_FINISHED, schema), params):
        finished[row.event_id] = finished.get(row.event_id, 0) + 1
    counts = {row.event_id: row.n for row in conn.execute(sql(DELIVERY_COUNTS, schema), params)}
    live = {row.event_id for row in conn.execute(sql(LIVE_REPLAYS, schema), params)}
    return settled_events(event_ids, counts, finished, live)


def _delete_events(
    conn: Connection, settings: Settings, event_ids: list[str], cutoff: datetime, *, dry_run: bool
) -> dict[str, int]:
    if not event_ids:
        return {"events": 0}
    schema = settings.db_schema
    params: dict[str, Any] = {"event_ids": event_ids, "cutoff": cutoff}
    if dry_run:
        row = conn.execute(sql(COUNT_EVENT_ROWS, schema), params).one()
        return {
            "attempts": row.attempts,
            "replays": row.replays,
            "deliveries": row.deliveries,
            "events": len(event_ids),
        }
    deleted = {}
    for key, statement in (
        ("attempts", DELETE_EVENT_ATTEMPTS),
        ("replays", DELETE_EVENT_REPLAYS),
        ("deliveries", DELETE_EVENT_DELIVERIES),
        ("events", DELETE_EVENTS),
    ):
        deleted[key] = int(conn.execute(sql(statement, schema), params).rowcount)
    return deleted
