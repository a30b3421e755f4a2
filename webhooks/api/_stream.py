"""``GET /v1/webhook_attempts/stream``: each new attempt of the key's project and mode, as
server-sent events, while the client stays connected (the live tail `/v1/logs/stream` gives
for logs).

The stream, as the client reads it (``text/event-stream``):

- at once, ``retry: 3000`` and a ``: subscribed`` comment: from here on, every attempt recorded
  reaches this client (the listener was listening before the comment was sent);
- per attempt, ``id: att_…``, ``event: webhook_attempt`` and ``data:`` the attempt as
  ``GET /v1/webhook_attempts`` lists it, on one line;
- when nothing happened for ``WEBHOOKS_API_STREAM_KEEPALIVE`` (15 s), a ``: keep-alive`` comment;
- if we end it (a client too far behind, the process shutting down), a last ``event: end``
  whose data is ``{"reason", "message"}``, then the connection closes.

The stream ends when the client disconnects; its subscription goes with it. The fan-out is
`_tail.AttemptTail`'s: one listener per process, not a query per client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from webhooks.api._handling import identity_of, state_of
from webhooks.api._render import attempt_object
from webhooks.api._routes import ERRORS, reject_unknown_parameters
from webhooks.api._tail import AttemptTail, End, StreamFilter, Subscription
from webhooks.feed import FeedItem
from webhooks.pages import ATTEMPT_STATUSES

log = logging.getLogger("webhooks.api.stream")

router = APIRouter(prefix="/v1", dependencies=[Depends(reject_unknown_parameters)])

SUBSCRIBED = b"retry: 3000\n: subscribed\n\n"
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


async def _frames(
    tail: AttemptTail, subscription: Subscription, keepalive: float
) -> AsyncIterator[bytes]:
    # Cancelled when the client disconnects: the finally clause ends the subscription.
    try:
        yield SUBSCRIBED
        while True:
            try:
                item = await asyncio.wait_for(subscription.queue.get(), keepalive)
            except TimeoutError:
                yield KEEP_ALIVE
                continue
            if isinstance(item, End):
                yield end_frame(item)
                return
            yield item
    finally:
        tail.unsubscribe(subscription)
        log.info(
            "api.stream.closed",
            extra={"project_id": subscription.filter.project_id, "clients": tail.clients},
        )


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
) -> StreamingResponse:
    """Each new attempt of the key's project and mode as it is recorded (server-sent events),
    optionally only one endpoint's, one event's, one event type's, or only succeeded or failed
    ones. Attempts recorded before the client connected are not sent: list them with
    `GET /v1/webhook_attempts`."""
    identity = identity_of(request)
    tail = tail_of(request)
    subscription = await tail.subscribe(
        StreamFilter(
            project_id=identity.project_id,
            mode=identity.mode,
            endpoint_id=endpoint_id,
            event_id=event_id,
            event_type=type,
            status=status,
        )
    )
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
        _frames(tail, subscription, keepalive),
        media_type="text/event-stream",
        # Proxies (nginx) would otherwise hold frames back to fill a buffer.
        headers={"X-Accel-Buffering": "no"},
    )
