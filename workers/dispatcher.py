"""The dispatcher: moves due deliveries from Postgres to the broker.

Each tick claims a batch of due rows (and, once a second, reaps expired leases), commits the
claims, and only then sends them as ``webhooks.deliver`` messages (a message for an
uncommitted claim could reach a worker before the claim is visible): one claim per message
while the workers have a free slot for each, batches of claims past that
(`messages.group_claims`). Between ticks it waits on LISTEN/NOTIFY (publish, enable and
replay notify at commit) or until the next scheduled retry falls due, whichever is first,
re-checks within 50 ms while due rows wait only for their endpoint's cap, and polls at least
every `WEBHOOKS_DISPATCH_POLL` in case a notification was missed. Any number of dispatchers
may run: ``SKIP LOCKED`` hands each row to one of them, and an endpoint's claims are decided
by one of them at a time (its cap holds across all of them).

Recoveries are carried out here too: twice a second (at once when one is created), a tick
first queues one batch of one running recovery, in its own short transaction
(`recovery.advance_recoveries`), so whichever dispatcher is alive carries them on. Queued
replays go through the same admission as scheduled work and take turns with it per
endpoint; the dispatcher remembers, per endpoint, which kind went last.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

import psycopg
import redis.exceptions
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine

from webhooks import clock, metrics
from webhooks.admission import CAPACITY_RECHECK
from webhooks.claiming import (
    ClaimBatch,
    Reaped,
    claim_due,
    next_due_at,
    reap_expired_leases,
    release_claims,
    release_held,
)
from webhooks.clock_offset import CLOCK_CHECK_EVERY, warn_if_clock_offset
from webhooks.database import create_engine, listen
from webhooks.endpoints import drop_retired_secrets
from webhooks.expansion import Expander
from webhooks.heartbeats import beat, forget, forget_stale, new_dispatcher_id
from webhooks.messages import TASK_NAME, Claim, Trigger, group_claims, task_id, task_kwargs
from webhooks.outbox import REPLAYS_QUEUED, channel
from webhooks.recovery import RECOVERIES_CREATED, advance_recoveries
from webhooks.sealing import plaintext_warning
from webhooks.settings import Settings
from workers.broker import waiting

log = logging.getLogger("webhooks.dispatcher")

RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
# How often a dispatcher says it is alive (`webhooks doctor` reads it).
HEARTBEAT_EVERY = 5.0
# How often expired leases are looked for. Leases last tens of seconds, so once a second is
# soon enough, and it keeps two statements off the ticks that carry fresh events.
REAP_EVERY = 1.0
# How often queued replays are looked for without a notification saying there are some.
REPLAYS_EVERY = 1.0
# How often running recoveries are looked at without a notification that one was created.
RECOVERIES_EVERY = 0.5
# Endpoints whose last turn (replay or scheduled) a dispatcher remembers; past this the memory
# starts afresh (a forgotten endpoint starts with scheduled work, which is fair enough).
TURNS_REMEMBERED = 10_000
# How often secrets past their rotation grace are removed from endpoints (they sign nothing).
DROP_RETIRED_SECRETS_EVERY = 60.0
# A dispatcher row not seen for this long belongs to a process that died (a live one beats
# every few seconds): its row only clutters `webhooks doctor`.
FORGET_DISPATCHERS_AFTER = timedelta(days=1)
# How often held rows of enabled endpoints are looked for (SPEC: a held delivery is attempted
# within 5 s of its endpoint's enable, even when a publish raced the enable).
RELEASE_HELD_EVERY = 2.0
# How long a dispatcher pauses after a round that found the workers behind (`_backlogged`).
# Rounds follow the publishes' notifications, so under a steady stream each would carry a
# claim or two, each its own message, and a worker's consumer pays Celery's own cost per
# message (~3.7 ms on a slow bench machine, ~2 ms on a fast one) under the one GIL its
# attempts share: at 100/s a message waited 33 ms (p50) in the broker for its turn, and at
# 190/s the queue grew without bound (p50 2.4 s). The pause lets the next round carry what
# fell due meanwhile in one task. Measured in alternation at 100/s and 200/s (p50 / p99, ms):
# a 20 ms pause 38-40 / 66-69 and 54-59 / 97-100; 40 ms 51-52 / 86 and 68 / 108-109; 20 ms
# counted from the round's start (shorter pauses, more messages) 41-48 / 104-133 and 120 /
# 245-283; on a faster machine at 392/s: none 391 / 689 (the queue ran away), 5 ms 22 / 62,
# 10 ms 25 / 41, 20 ms 29 / 45.
GATHER = 0.02
# A round that sent pauses only when the workers are behind: a message of an earlier round
# still waits in the broker (no consumer was free to take it), or at least this many attempts
# are in flight (at least `Settings.worker_slots`). Pausing after every round that sent cost
# an event of a slow stream up to the whole pause: p50 at 100/s 22-25 ms against 8-11 ms with
# this rule; at 392/s p50 31-37 against 31-41, p99 (median of runs) 55 against 61 ms
# (bench/RESULTS.md, 2026-12-03). 2 paused as often as always; the Redis test alone came too
# late at 392/s (p99 170 ms).
QUIET_IN_FLIGHT = 4


@dataclass
class TickResult:
    """What one tick did."""

    reaped: int
    claimed: int
    sent: int
    waiting: int = 0
    next_due: datetime | None = None
    # The round sent, and the workers were behind (`Dispatcher._backlogged`).
    backlogged: bool = False


def send_claims(app: Celery, settings: Settings, claims: Sequence[Claim], producer: Any) -> None:
    """Publish one ``webhooks.deliver`` message carrying ``claims`` (one, or a batch)."""
    kwargs = task_kwargs(claims)
    app.send_task(
        TASK_NAME,
        kwargs=kwargs,
        queue=settings.queue,
        task_id=task_id(claims),
        producer=producer,
        # What Flower shows as the arguments. Celery would build the same text with its
        # length-capped `saferepr`, a visible share of the dispatcher's time per message, and
        # would cut a batch's list short; these values are short ids and numbers, so plain
        # repr is exact and cheap.
        argsrepr="()",
        kwargsrepr=repr(kwargs),
    )


def send_round(app: Celery, settings: Settings, groups: Sequence[Sequence[Claim]]) -> None:
    """Publish a round's messages, one per group (`send_claims`), in one broker round trip
    where the broker allows it.

    On Redis, kombu's `Producer.batch` buffers each message's LPUSH in one pipeline and
    sends it when the block ends: a round of N messages costs one round trip, not N (one
    per message was 41 % of a busy dispatcher's time, bench/RESULTS.md). The messages are
    the ones a plain publish writes. Transports without batching (RabbitMQ) publish each
    message at once, as before. If the block fails, nothing of it is known to be sent: kombu
    discards what it buffered, and a failed pipeline may have written any part of it.
    """
    with app.producer_or_acquire() as producer, producer.batch():
        for group in groups:
            send_claims(app, settings, group, producer)


def untaken_messages(app: Celery, settings: Settings) -> int | None:
    """How many messages wait in the queue that no worker took (`workers.broker.waiting`);
    None where the broker cannot say, or did not answer: the messages are sent either way,
    and the attempts in flight decide alone (`Dispatcher._backlogged`)."""
    untaken = None
    try:
        with app.producer_or_acquire() as producer:
            untaken = waiting(producer.channel, settings.queue)
    except (redis.exceptions.RedisError, OSError) as exc:
        log.warning("dispatcher.queue_length_unknown", extra={"error": str(exc)})
    return untaken


class Dispatcher:
    """The outbox relay. `run()` loops until `stop()`; `tick()` does one round."""

    def __init__(self, settings: Settings, app: Celery, engine: Engine | None = None) -> None:
        self.settings = settings
        self.app = app
        # No pre-ping: a statement on a dead connection fails the tick, and `run` starts over.
        # Commits need not wait for the disk: every write of a dispatcher is safe to lose in
        # a Postgres crash (see create_engine), and waiting for the flush put the disk's
        # stalls (tens of ms under writeback) in front of every event of the tick.
        self.engine = engine or create_engine(
            settings, pool_size=2, pre_ping=False, wait_for_flush=False
        )
        self._stopping = threading.Event()
        self._listener: psycopg.Connection[Any] | None = None
        self.id = new_dispatcher_id()
        self._last_beat = float("-inf")
        self._last: dict[str, float] = {}
        self._replays_queued = False
        self._recoveries_due = True
        self._last_turn: dict[str, Trigger] = {}
        self._expander = Expander(self.engine, settings)
        self._expansion_left = False

    def stop(self) -> None:
        """Ask the loop to finish its current tick and return."""
        self._stopping.set()

    def tick(self) -> TickResult:
        """Claim a batch and send its messages.

        First, in its own transaction, the next batch of a running recovery if one may be
        due. Then in one transaction: now and then (the ``*_EVERY`` above) reap expired
        leases, and look for queued replays (at once when a notification said some were
        queued, or the last batch left some); when the batch was not full, read when the
        earliest pending delivery or replay is due, for `run` to know how long it may sleep.

        Before all of it, committed events are expanded into their deliveries (`expansion`:
        short transactions, up to its round budget).
        """
        # Before `now` is read: the deliveries it writes are due at once; this tick claims them.
        self._expansion_left = self._expander.run().more
        now = clock.now()
        reaped = Reaped([], 0)
        limit = self.settings.dispatch_batch_size
        if self._every("recoveries", RECOVERIES_EVERY) or self._recoveries_due:
            # One batch per tick while a recovery has more to queue.
            self._recoveries_due = advance_recoveries(self.engine, self.settings, now) > 0
            self._replays_queued |= self._recoveries_due
        with self.engine.begin() as conn:
            if self._every("reap", REAP_EVERY):
                reaped = reap_expired_leases(conn, self.settings, now)
            if self._every("release_held", RELEASE_HELD_EVERY):
                release_held(conn, self.settings, now)
            replays = self._every("replays", REPLAYS_EVERY) or self._replays_queued
            batch = claim_due(
                conn, self.settings, now, limit, replays=replays, last_turn=self._last_turn
            )
            self._replays_queued = batch.replays_left
            next_due = None
            if len(batch.claims) < limit:
                next_due = next_due_at(conn, self.settings)
        if len(self._last_turn) > TURNS_REMEMBERED:
            self._last_turn.clear()
        self._last_turn.update(batch.last_turn)
        if reaped.count:
            self._report(reaped)
        metrics.CLAIMED.inc(len(batch.claims))
        sent, untaken = self._send(batch)
        return TickResult(
            reaped.count,
            len(batch.claims),
            sent,
            batch.waiting,
            next_due,
            backlogged=bool(sent) and self._backlogged(batch.in_flight + sent, untaken),
        )

    def _backlogged(self, in_flight: int, untaken: int | None) -> bool:
        """Whether the workers are behind (the next round should gather, `GATHER`), from the
        attempts in flight once this round's are sent and the messages left untaken in the
        broker; a broker that cannot say (None) leaves the attempts in flight to decide."""
        slots = self.settings.worker_slots
        if untaken is None:
            return in_flight >= slots
        return untaken > 0 or in_flight >= max(slots, QUIET_IN_FLIGHT)

    def _report(self, reaped: Reaped) -> None:
        log.warning("dispatcher.leases_expired", extra={"count": reaped.count})
        metrics.LEASES_EXPIRED.inc(reaped.count)
        # Each of these was claimed and never recorded an attempt before its lease ran out:
        # a worker killed mid-request, a lost message, or a crash before recording. Once is
        # an accident; the count makes a loop visible (`webhooks stats`, the metric).
        for delivery in reaped.deliveries:
            log.warning(
                "delivery.reclaimed_without_attempt",
                extra={
                    "delivery_id": delivery.delivery_id,
                    "endpoint_id": delivery.endpoint_id,
                    "reclaims": delivery.reclaims,
                },
            )
        metrics.RECLAIMED_WITHOUT_ATTEMPT.inc(len(reaped.deliveries))

    def _every(self, what: str, seconds: float) -> bool:
        """True (and the clock restarted) if ``what`` was last done ``seconds`` ago or more."""
        now = time.monotonic()
        if now - self._last.get(what, float("-inf")) < seconds:
            return False
        self._last[what] = now
        return True

    def _send(self, batch: ClaimBatch) -> tuple[int, int | None]:
        """Send the round's claims, alone or grouped (`messages.group_claims`), in one write
        (`send_round`); if it fails, give them all back. Returns how many claims went out,
        and how many messages the broker then held untaken (None: it cannot say)."""
        claims = batch.claims
        if not claims:
            return 0, None
        groups = group_claims(
            claims,
            in_flight=batch.in_flight,
            slots=self.settings.worker_slots,
            most=self.settings.batch_max,
            alone=lambda claim: claim.endpoint_id in batch.unsteady,
        )
        try:
            send_round(self.app, self.settings, groups)
        except Exception:
            # A message of a released claim that did reach the broker finds its claim token
            # gone and is dropped by the worker (`recording`); the row is claimed again.
            log.exception("dispatcher.broker_error", extra={"unsent": len(claims)})
            with self.engine.begin() as conn:
                release_claims(conn, self.settings, list(claims), clock.now())
            return 0, None
        return len(claims), untaken_messages(self.app, self.settings)

    def run(self) -> None:
        """Loop until stopped, surviving database and broker outages."""
        failures = 0
        started = False
        while not self._stopping.is_set():
            try:
                self.heartbeat()
                if not started:
                    # Only now is it visible to `webhooks doctor`: say so once.
                    log.info(
                        "dispatcher.started",
                        extra={"schema": self.settings.db_schema, "queue": self.settings.queue},
                    )
                    started = True
                result = self.tick()
                failures = 0
                if result.claimed >= self.settings.dispatch_batch_size or self._expansion_left:
                    continue  # more is due (or to expand) right now
                if result.backlogged:
                    self._stopping.wait(GATHER)
                wait = self._seconds_until(result.next_due)
                if result.waiting or wait == 0.0 or self._recoveries_due:
                    # Rows are due but were not claimed: their endpoints are at their cap.
                    # Slots free up as attempts finish, and nothing notifies us of that.
                    wait = CAPACITY_RECHECK.total_seconds()
                self._wait(wait)
            except (sa.exc.DBAPIError, psycopg.Error) as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("dispatcher.database_error", extra={"error": str(exc).splitlines()[0]})
                self._close_listener()
                self._stopping.wait(delay)
        self._close_listener()
        with contextlib.suppress(sa.exc.DBAPIError), self.engine.begin() as conn:
            forget(conn, self.settings, self.id)
        self.engine.dispose()

    def heartbeat(self) -> None:
        """Record a heartbeat if one is due (the first call always records one).

        The slow chores ride along, each on its own period: measuring this machine's clock
        against the database's (a warning if it is off by more than the leases tolerate),
        dropping endpoint secrets whose grace period is over, and forgetting the rows of
        dispatchers that died without saying so.
        """
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY:
            with self.engine.begin() as conn:
                if self._every("clock", CLOCK_CHECK_EVERY.total_seconds()):
                    warn_if_clock_offset(conn, log)
                now = clock.now()
                beat(conn, self.settings, self.id, now)
                metrics.refresh_gauges(conn, self.settings, now)
                if self._every("retired_secrets", DROP_RETIRED_SECRETS_EVERY):
                    drop_retired_secrets(conn, self.settings, now)
                    forget_stale(conn, self.settings, older_than=FORGET_DISPATCHERS_AFTER, now=now)
            self._last_beat = time.monotonic()

    def _seconds_until(self, due: datetime | None) -> float:
        poll = self.settings.dispatch_poll_interval.total_seconds()
        if due is None:
            return poll
        return max(0.0, min(poll, (due - clock.now()).total_seconds()))

    def _wait(self, seconds: float) -> None:
        if not self.settings.notify:
            self._stopping.wait(seconds)
            return
        listener = self._listen()
        deadline = time.monotonic() + seconds
        # Several notifications may be queued (one per publishing commit): one tick serves
        # them all, so drain what is there after the first.
        for notification in listener.notifies(timeout=max(seconds, 0.0), stop_after=1):
            self._note(notification)
        if time.monotonic() < deadline:
            for notification in listener.notifies(timeout=0.0):
                self._note(notification)

    def _note(self, notification: psycopg.Notify) -> None:
        if notification.payload == REPLAYS_QUEUED:
            self._replays_queued = True
        elif notification.payload == RECOVERIES_CREATED:
            self._recoveries_due = True

    def _listen(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            self._listener = listen(self.engine, channel(self.settings))
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
            self._listener = None


def run_dispatcher(settings: Settings) -> None:
    """Run a dispatcher in the foreground until SIGINT or SIGTERM."""
    from workers.app import app
    from workers.heap import freeze_startup_objects

    dispatcher = Dispatcher(settings, app)
    warning = plaintext_warning(settings.secret_keys, is_dev=settings.is_dev)
    if warning:
        log.warning("secrets.stored_in_plain_text", extra={"detail": warning})
    metrics.serve(settings)
    freeze_startup_objects()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("dispatcher.stopping", extra={"signal": signum})
        dispatcher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    dispatcher.run()
    log.info("dispatcher.stopped")
