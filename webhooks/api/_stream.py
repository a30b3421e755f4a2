"""``GET /v1/webhook_attempts/stream``: each new attempt of the key's project and mode, as
server-sent events, while the client stays connected (the live tail `/v1/logs/stream` gives
for logs).

The stream, as the client reads it (``text/event-stream``):

- at once, ``retry: 3000`` and a ``: subscribed`` comment: from here on, every attempt recorded
  reaches this client (the listener was listening before the comment was sent);
- with a ``Last-Event-ID`` header (what a browser's EventSource sends when it reconnects: the
  last ``id:`` it got), first the attempts of the client's scope after that one, oldest first,
  at most `BACKFILL` of them; if more followed, an ``id:`` line with the last one looked at and
  an ``end`` event (``behind``): connecting again with it gives the next ones;
- per attempt, ``id: att_…`` (the attempt's id), ``event: webhook_attempt`` and ``data:`` the
  attempt as ``GET /v1/webhook_attempts`` lists it, on one line;
- when nothing happened for ``WEBHOOKS_API_STREAM_KEEPALIVE`` (15 s), a ``: keep-alive`` comment;
- if we end it (a client too far behind, the process shutting down), a last ``event: end``
  whose data is ``{"reason", "message"}``, then the connection closes.

The stream ends when the client disconnects; its subscription goes with it. The fan-out is
`_tail.AttemptTail`'s: one reader per process, not a query per client per attempt (a
reconnection with ``Last-Event-ID`` costs one walk of the list's index, once).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from webhooks.api._errors import invalid
from webhooks.api._handling import identity_of, state_of
from webhooks.api._render import attempt_object
from webhooks.api._routes import ERRORS, reject_unknown_parameters
from webhooks.api._tail import AttemptTail, End, StreamFilter, Subscription
from webhooks.feed import FeedItem, attempt_ids_after, read_attempts
from webhooks.pages import ATTEMPT_STATUSES, Scope

log = logging.getLogger("webhooks.api.stream")

router = APIRouter(prefix="/v1", dependencies=[Depends(reject_unknown_parameters)])

SUBSCRIBED = b"retry: 3000\n: subscribed\n\n"
# Most attempts a reconnection with Last-Event-ID is sent before the live tail.
BACKFILL = 1000
BEHIND = End(
    "behind",
    "more attempts followed the Last-Event-ID than one connection sends; connect again with "
    "the last id received to get the next ones, or list them with GET /v1/webhook_attempts",
)
KEEP_ALIVE = b": keep-alive\n\n"
EXAMPLE = (
    "retry: 3000\n: subscribed\n\n"
    "id: att_1042\nevent: webhook_attempt\n"
    'data: {"id": "att_1042", "object": "webhook_attempt", "event_id": "evt_…", …}\n\n'
    ": keep-alive\n\n"
)


def attempt_frame(item: FeedItem) -> bytes:
    """One attempt as an SSE frame (rendered once, sent to every client it matches)."""
    body = json.dumps(attempt_object(item.attempt), separators=(",", ":"))
    return f"id: att_{item.attempt.id}\nevent: webhook_attempt\ndata: {body}\n\n".encode()


def end_frame(why: End) -> bytes:
    """The last frame of a stream we end."""
    body = json.dumps({"reason": why.reason, "message": why.message})
    return f"event: end\ndata: {body}\n\n".encode()


def tail_of(request: Request) -> AttemptTail:
    """The app's attempt tail."""
    tail: AttemptTail = state_of(request).tail
    return tail


def frame_id(frame: bytes) -> int:
    """The attempt id of a frame `attempt_frame` made."""
    return int(frame[len(b"id: att_") : frame.index(b"\n")])


def last_event_id(header: str | None) -> int | None:
    """The attempt id of a ``Last-Event-ID`` header (``att_1042``, as sent), or None."""
    if header is None or not header.strip():
        return None
    number = header.strip().removeprefix("att_")
    if not number.isdigit() or len(number) > 18:
        raise invalid(
            "Last-Event-ID is not an id this stream sent (att_ and digits)", param="Last-Event-ID"
        )
    return int(number)


@dataclass(frozen=True)
class Missed:
    """What a reconnecting client missed: its frames, and where it should resume if there was
    more than `BACKFILL` (None: it is up to date)."""

    frames: list[bytes]
    resume_after: int | None


def read_missed(tail: AttemptTail, stream_filter: StreamFilter, after: int) -> Missed:
    """The attempts of the filter's scope after ``after``, oldest first, rendered (on a
    thread: one index walk and one read of the rows)."""
    f = stream_filter
    with tail.engine.connect() as conn:
        ids = attempt_ids_after(
            conn,
            tail.settings,
            Scope(f.project_id, f.mode),
            after,
            BACKFILL + 1,
            endpoint_id=f.endpoint_id,
            event_id=f.event_id,
            status=f.status,
        )
        items = read_attempts(conn, tail.settings, ids[:BACKFILL])
    frames = [tail.render(item) for item in items if f.matches(item)]
    return Missed(frames, ids[BACKFILL - 1] if len(ids) > BACKFILL else None)


async def _frames(
    tail: AttemptTail, subscription: Subscription, keepalive: float, missed: Missed | None
) -> AsyncIterator[bytes]:
    # Cancelled when the client disconnects: the finally clause ends the subscription.
    try:
        yield SUBSCRIBED
        sent: set[int] = set()
        if missed is not None:
            for frame in missed.frames:
                sent.add(frame_id(frame))
                yield frame
            if missed.resume_after is not None:
                # An id line alone moves the client's Last-Event-ID without an event.
                yield f"id: att_{missed.resume_after}\n\n".encode() + end_frame(BEHIND)
                return
        async for frame in _live(subscription, keepalive, sent):
            yield frame
    finally:
        tail.unsubscribe(subscription)
        log.info(
            "api.stream.closed",
            extra={"project_id": subscription.filter.project_id, "clients": tail.clients},
        )


async def _live(
    subscription: Subscription, keepalive: float, sent: set[int]
) -> AsyncIterator[bytes]:
    while True:
        try:
            item = await asyncio.wait_for(subscription.queue.get(), keepalive)
        except TimeoutError:
            yield KEEP_ALIVE
            continue
        if isinstance(item, End):
            yield end_frame(item)
            return
        # Recorded while the missed ones were read: already sent.
        if sent and frame_id(item) in sent:
            continue
        yield item


STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "Server-sent events: one `webhook_attempt` event per new attempt.",
        "content": {"text/event-stream": {"schema": {"type": "string"}, "example": EXAMPLE}},
    },
}


@router.get(
    "/webhook_attempts/stream",
    response_class=StreamingResponse,
    responses=STREAM_RESPONSES,
    tags=["attempts"],
)
async def stream_attempts(
    request: Request,
    endpoint_id: str | None = Query(None, max_length=200),
    event_id: str | None = Query(None, max_length=200),
    type: str | None = Query(
        None,
        max_length=200,
        description="An event type, or a prefix ending in .* (deployment.*).",
        examples=["deployment.*"],
    ),
    status: str | None = Query(None, pattern="^(" + "|".join(ATTEMPT_STATUSES) + ")$"),
    last_event: str | None = Header(
        None,
        alias="Last-Event-ID",
        max_length=40,
        description="The last id received (a reconnecting EventSource sends it): the attempts "
        "after it are sent first.",
        examples=["att_1042"],
    ),
) -> StreamingResponse:
    """Each new attempt of the key's project and mode as it is recorded (server-sent events),
    optionally only one endpoint's, one event's, one event type's, or only succeeded or failed
    ones. Attempts recorded before the client connected are not sent, unless it gives the
    last id it received (`Last-Event-ID`): then up to 1000 attempts after that one come
    first. List older ones with `GET /v1/webhook_attempts`."""
    identity = identity_of(request)
    after = last_event_id(last_event)
    tail = tail_of(request)
    stream_filter = StreamFilter(
        project_id=identity.project_id,
        mode=identity.mode,
        endpoint_id=endpoint_id,
        event_id=event_id,
        event_type=type,
        status=status,
    )
    # Subscribed first, then the missed ones read: nothing recorded in between is lost (and
    # what both give is sent once).
    subscription = await tail.subscribe(stream_filter)
    missed = None
    if after is not None:
        try:
            missed = await asyncio.to_thread(read_missed, tail, stream_filter, after)
        except BaseException:
            tail.unsubscribe(subscription)
            raise
    log.info(
        "api.stream.opened",
        extra={
            "key_id": identity.key_id,
            "project_id": identity.project_id,
            "clients": tail.clients,
        },
    )
    keepalive = state_of(request).settings.api_stream_keepalive.total_seconds()
    return StreamingResponse(
        _frames(tail, subscription, keepalive, missed),
        media_type="text/event-stream",
        # Proxies (nginx) would otherwise hold frames back to fill a buffer.
        headers={"X-Accel-Buffering": "no"},
    )
