"""kombu's Redis transport, with one command client per channel instead of one per command.

kombu 5.7's Redis channel builds a new ``redis.Redis`` object for every publish and every
late-ack bookkeeping step (``Channel.conn_or_acquire``). The objects share one connection
pool, so nothing is gained by the churn, and redis-py's constructor copies its whole table
of response callbacks each time: profiled, that was 10 % of a worker's GIL time and 12 % of
a dispatcher's (bench/RESULTS.md). A ``redis.Redis`` is safe to share between threads (each
command takes a connection from the pool), so the channel keeps one per pool and builds a
new one only when the pool is replaced after a reconnect.

`workers.app.celery_config` selects it for ``redis://`` broker URLs; every other URL keeps
kombu's own transport. `waiting` tells the dispatcher whether the workers keep up.
"""

from __future__ import annotations

import threading
from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses its synchronous command client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._command_client: tuple[Any, Any] | None = None
        self._command_client_lock = threading.Lock()
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _get_pool(self, asynchronous: bool = False) -> Any:
        # Closing a channel after the broker went away restores its unacked messages, which
        # asks for a pool; once the connection has let go of its client there are no
        # parameters to build one from, and kombu's AttributeError is not a connection
        # error, so the consumer's reconnect treats it as fatal and the worker exits. Say
        # what it is: the connection is gone (the consumer then reconnects).
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return super()._get_pool(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        cached = self._command_client
        if cached is not None and cached[0] is pool:
            return cached[1]
        with self._command_client_lock:
            cached = self._command_client
            if cached is None or cached[0] is not pool:
                client = super()._create_client()  # type: ignore[no-untyped-call]
                cached = self._command_client = (pool, client)
        return cached[1]


def waiting(channel: Any, queue: str) -> int | None:
    """How many messages in ``queue`` no consumer has taken yet; None where the transport
    cannot say cheaply (only Redis is asked: one LLEN).

    An idle Celery consumer waits in BRPOP, and Redis hands it a pushed message before it
    answers the next command, so right after a publish this is 0 when a worker was free to
    take it, and more when every consumer was busy with earlier messages.
    """
    if not isinstance(channel, kombu_redis.Channel):
        return None
    # The channel's command client: its `client` attribute is the asynchronous one, whose
    # connection belongs to BRPOP and must not carry other replies.
    with channel.conn_or_acquire() as client:
        return int(client.llen(queue))


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel`."""

    Channel = Channel
