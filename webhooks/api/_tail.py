"""One reader of new attempts per API process, fanned out to its clients in memory.

A thread of the process waits for a notification on the attempts channel (whatever its
payload: one per attempt, one per recorded batch, or empty) or for a second to pass (with
``WEBHOOKS_NOTIFY=false`` it only waits for the second), then asks for the ids above the last
it has seen (`feed.attempt_ids_since`, looking back a few seconds for ids whose transactions
committed late), reads the rows of the new ones in one query (`feed.read_attempts`), renders
each attempt once, and hands the frames to the event loop, which offers each to the
subscriptions whose filters match. So an attempt costs one query per process, whatever the
number of clients, and a second at most between its commit and its frame without
notifications.

Each subscription has a bounded queue. A client that falls `queue_size` frames behind is
dropped: its queue is emptied and an end frame put in its place, so a slow reader costs a
bounded amount of memory and learns it should catch up with the list route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from webhooks.errors import DatabaseUnavailable
from webhooks.event_types import matches
from webhooks.feed import FeedItem, attempt_ids_since, newest_attempt_id, read_attempts
from webhooks.settings import Settings, attempts_channel

log = logging.getLogger("webhooks.api.stream")

# Frames a client may fall behind before it is dropped.
QUEUE_SIZE = 1000
# How long a notification wait (or a poll's pause) lasts before the thread checks whether to stop.
POLL_SECONDS = 1.0
# A poll looks this far back for ids whose transactions committed after newer ones'.
LOOK_BACK_SECONDS = 10.0
# A subscription waits this long for the listener to be ready; after that, 503.
READY_SECONDS = 10.0
RECONNECT_SECONDS = 1.0
# Ids read per query of new ids.
ID_PAGE = 10_000


@dataclass(frozen=True)
class StreamFilter:
    """Which attempts a subscription receives: its key's project and mode, and optionally
    one endpoint, one event, an event type (exact or ``prefix.*``) and an outcome."""

    project_id: str
    mode: str
    endpoint_id: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    status: str | None = None

    def matches(self, item: FeedItem) -> bool:
        """True if ``item`` is for this subscription."""
        attempt = item.attempt
        if (item.project_id, attempt.mode) != (self.project_id, self.mode):
            return False
        if self.endpoint_id is not None and attempt.endpoint_id != self.endpoint_id:
            return False
        if self.event_id is not None and attempt.event_id != self.event_id:
            return False
        if self.event_type is not None and not matches([self.event_type], item.event_type):
            return False
        if self.status is not None:
            succeeded = attempt.error_kind is None and 200 <= (attempt.response_status or 0) < 300
            return (self.status == "succeeded") == succeeded
        return True


@dataclass(frozen=True)
class End:
    """Why a stream ends from our side: the last frame its client gets."""

    reason: str
    message: str


SLOW_CLIENT = End(
    "slow_client",
    "this client fell too far behind the stream and was disconnected; list what it missed "
    "with GET /v1/webhook_attempts and connect again",
)
SHUTTING_DOWN = End(
    "shutting_down",
    "this API process is shutting down; connect again (another process will serve you) and "
    "list anything missed meanwhile with GET /v1/webhook_attempts",
)


class Subscription:
    """One connected client: its filter and its queue of rendered frames."""

    def __init__(self, stream_filter: StreamFilter, queue_size: int) -> None:
        self.filter = stream_filter
        self.queue: asyncio.Queue[bytes | End] = asyncio.Queue(queue_size + 1)
        self._room = queue_size

    def offer(self, frame: bytes) -> bool:
        """Queue ``frame``; False (and nothing queued) if the client is too far behind."""
        if self.queue.qsize() >= self._room:
            return False
        self.queue.put_nowait(frame)
        return True

    def end(self, why: End) -> None:
        """Replace whatever is queued by the final frame."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(why)


Render = Callable[[FeedItem], bytes]


class AttemptTail:
    """The process's listener and its subscriptions (started by the first subscription)."""

    def __init__(
        self, settings: Settings, engine: Engine, render: Render, queue_size: int = QUEUE_SIZE
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.render = render
        self.queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def clients(self) -> int:
        """How many clients are subscribed."""
        return len(self._subscriptions)

    async def subscribe(self, stream_filter: StreamFilter) -> Subscription:
        """A new subscription, once the listener is listening: every attempt recorded after
        this returns reaches it (if it matches). Raises `DatabaseUnavailable` if the listener
        cannot start."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._ready = asyncio.Event()
            self._thread = threading.Thread(
                target=self._run, name="webhooks-attempt-tail", daemon=True
            )
            self._thread.start()
        assert self._ready is not None
        try:
            await asyncio.wait_for(self._ready.wait(), READY_SECONDS)
        except TimeoutError:
            raise DatabaseUnavailable(
                "the attempt stream could not start listening to the database; retry shortly"
            ) from None
        subscription = Subscription(stream_filter, self.queue_size)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription (its client left, or was dropped)."""
        self._subscriptions.discard(subscription)

    def end_all(self, why: End = SHUTTING_DOWN) -> None:
        """End every stream with ``why`` (thread-safe: a signal handler may call it)."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._end_all, why)

    def close(self) -> None:
        """End every stream and stop the listener."""
        self._stopping.set()
        self.end_all()
        if self._thread is not None:
            self._thread.join(timeout=POLL_SECONDS * 5)

    # -- on the event loop ---------------------------------------------------------------------

    def _end_all(self, why: End) -> None:
        for subscription in list(self._subscriptions):
            subscription.end(why)
        self._subscriptions.clear()

    def _fan_out(self, frames: Sequence[tuple[FeedItem, bytes]]) -> None:
        for item, frame in frames:
            for subscription in list(self._subscriptions):
                if subscription.filter.matches(item) and not subscription.offer(frame):
                    log.warning(
                        "api.stream.client_dropped",
                        extra={"project_id": subscription.filter.project_id, "reason": "slow"},
                    )
                    subscription.end(SLOW_CLIENT)
                    self._subscriptions.discard(subscription)

    # -- on the listener thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.settings.notify:
                    self._listen()
                else:
                    self._poll()
            except (psycopg.Error, sa.exc.SQLAlchemyError) as exc:
                log.warning("api.stream.listener_failed", extra={"error": str(exc).strip()})
                self._stopping.wait(RECONNECT_SECONDS)

    def _set_ready(self) -> None:
        assert self._loop is not None
        assert self._ready is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: the app is gone
            self._loop.call_soon_threadsafe(self._ready.set)

    def _listen(self) -> None:
        url = sa.make_url(self.settings.database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f'LISTEN "{attempts_channel(self.settings.db_schema)}"')
            ids = self._start_reading()
            while not self._stopping.is_set():
                # Only that something was recorded matters, not what a notification says:
                # take every one already there, then read what is new.
                if any(True for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1)):
                    for _ in conn.notifies(timeout=0.0):
                        pass
                self._publish(ids.new())

    def _poll(self) -> None:
        ids = self._start_reading()
        while not self._stopping.wait(POLL_SECONDS):
            self._publish(ids.new())

    def _start_reading(self) -> NewIds:
        with self.engine.connect() as conn:
            newest = newest_attempt_id(conn, self.settings)
        self._set_ready()
        return NewIds(self.settings, self.engine, newest)

    def _publish(self, ids: Sequence[int]) -> None:
        if not ids or not self._subscriptions or self._loop is None:
            return
        with self.engine.connect() as conn:
            items = read_attempts(conn, self.settings, ids)
        frames = [(item, self.render(item)) for item in items]
        if frames:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._fan_out, frames)


class NewIds:
    """The ids of attempts recorded since the last call, each once (on the listener thread).

    Ids are handed out when a row is inserted and become visible when its transaction
    commits, so a smaller id may appear after a larger one: each read starts from the
    highest id seen `LOOK_BACK_SECONDS` ago, and the ids seen since are remembered.
    """

    def __init__(self, settings: Settings, engine: Engine, newest: int) -> None:
        self.settings = settings
        self.engine = engine
        self._seen: set[int] = set()
        self._highs: deque[tuple[float, int]] = deque([(time.monotonic(), newest)])

    def new(self) -> list[int]:
        """Ids above the look-back's floor not returned before, oldest first."""
        now = time.monotonic()
        while len(self._highs) > 1 and self._highs[1][0] < now - LOOK_BACK_SECONDS:
            self._highs.popleft()
        floor = self._highs[0][1]
        self._seen = {i for i in self._seen if i > floor}
        found = self._ids_above(floor)
        fresh = [i for i in found if i not in self._seen]
        self._seen.update(fresh)
        self._highs.append((now, max([self._highs[-1][1], *found])))
        return fresh

    def _ids_above(self, floor: int) -> list[int]:
        # In pages, so that a burst larger than a page is read whole, not its first page
        # over and over.
        found: list[int] = []
        with self.engine.connect() as conn:
            while True:
                page = attempt_ids_since(conn, self.settings, floor, ID_PAGE)
                found += page
                if len(page) < ID_PAGE:
                    return found
                floor = page[-1]
