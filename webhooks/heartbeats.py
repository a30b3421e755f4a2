"""Dispatcher heartbeats: each dispatcher upserts its row in ``dispatchers`` as it loops.

`webhooks doctor` reads the freshest ``seen_at``: if no dispatcher has beaten recently,
nothing moves due deliveries to the broker, whatever the workers are doing. Rows are keyed by
a per-process id (`new_dispatcher_id`), so several dispatchers on several machines each keep
their own row; a dispatcher that stops cleanly removes its row (`forget`), and rows of ones
that died are removed by `forget_stale` (the dispatchers' heartbeat calls it, for rows not
seen for a day).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.settings import Settings

FORGET = "DELETE FROM {s}.dispatchers WHERE id = :id"
FORGET_STALE = "DELETE FROM {s}.dispatchers WHERE seen_at < :cutoff"
BEAT = """
INSERT INTO {s}.dispatchers (id, hostname, pid, started_at, seen_at)
VALUES (:id, :hostname, :pid, :now, :now)
ON CONFLICT (id) DO UPDATE SET seen_at = greatest({s}.dispatchers.seen_at, EXCLUDED.seen_at)
"""
LIST = """
SELECT id, hostname, pid, started_at, seen_at FROM {s}.dispatchers ORDER BY seen_at DESC
"""


@dataclass(frozen=True)
class Dispatcher:
    """One dispatcher process as last seen."""

    id: str
    hostname: str
    pid: int
    started_at: datetime
    seen_at: datetime


def new_dispatcher_id() -> str:
    """Return an id for this process: ``host:pid:random`` (a restarted pid gets a new row)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def beat(
    conn: Connection,
    settings: Settings,
    dispatcher_id: str,
    now: datetime,
    *,
    hostname: str | None = None,
    pid: int | None = None,
) -> None:
    """Record that ``dispatcher_id`` is alive at ``now`` (insert its row the first time).

    Cheap enough for every loop iteration, but once every few seconds is plenty: the doctor
    tolerates tens of seconds. Commit it on its own: a beat inside a claim transaction would
    be rolled back with it.

    Args:
        conn: a connection in a transaction the caller commits.
        settings: for the schema.
        dispatcher_id: from `new_dispatcher_id`, fixed for the life of the process.
        now: the clock's time (`webhooks.clock.now()`).
        hostname: defaults to this machine's name.
        pid: defaults to this process's id.
    """
    conn.execute(
        sql(BEAT, settings.db_schema),
        {
            "id": dispatcher_id,
            "hostname": hostname if hostname is not None else socket.gethostname(),
            "pid": pid if pid is not None else os.getpid(),
            "now": now,
        },
    )


def forget(conn: Connection, settings: Settings, dispatcher_id: str) -> None:
    """Remove a dispatcher's row when it stops cleanly."""
    conn.execute(
        sql(FORGET, settings.db_schema),
        {"id": dispatcher_id},
    )


def forget_stale(
    conn: Connection, settings: Settings, *, older_than: timedelta, now: datetime
) -> int:
    """Remove rows of dispatchers not seen for ``older_than``; return how many."""
    result = conn.execute(
        sql(FORGET_STALE, settings.db_schema),
        {"cutoff": now - older_than},
    )
    return int(result.rowcount)


def list_dispatchers(conn: Connection, settings: Settings) -> list[Dispatcher]:
    """Every dispatcher row, most recently seen first."""
    return [
        Dispatcher(row.id, row.hostname, row.pid, row.started_at, row.seen_at)
        for row in conn.execute(sql(LIST, settings.db_schema))
    ]
