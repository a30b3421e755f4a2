"""How far this machine's clock is from the database's, and the limit the design assumes.

Leases compare times written on one machine with the clock of another: a dispatcher claims a
delivery until ``its now + WEBHOOKS_LEASE``, and any dispatcher reaps the claim once its own
``now`` is past that; a worker extends the lease from its own ``now`` before sending. Every
process asks one clock (`webhooks.clock`, this machine's), and SQL takes that ``now`` as a
parameter, so that frozen time reaches the queries. The price is an assumption: every
machine's clock is within `MAX_CLOCK_OFFSET` of the database's. A dispatcher whose clock runs
ahead by more reaps live claims early and the delivery is sent twice.

This module checks the assumption. The database's time is read with ``clock_timestamp()``
(the time of reading, not of the transaction's start) between two readings of our clock; it
was read somewhere in between, so the estimate is the midpoint, give or take half the round
trip, and of a few samples the one with the shortest round trip is kept (as NTP does).
`webhooks doctor` fails above the limit; dispatchers and workers log a warning when they
start and now and then while they run (`warn_if_clock_offset`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from webhooks import clock

# The assumption the README states; the doctor fails above it.
MAX_CLOCK_OFFSET = timedelta(seconds=1)
# How often running dispatchers and workers measure again (one short query each time).
CLOCK_CHECK_EVERY = timedelta(seconds=60)
SAMPLES = 3
DATABASE_NOW = sa.text("SELECT clock_timestamp()")


@dataclass(frozen=True)
class ClockOffset:
    """This machine's clock minus the database's (positive: ahead), and how sure that is."""

    offset: timedelta
    uncertainty: timedelta

    def is_within(self, limit: timedelta = MAX_CLOCK_OFFSET) -> bool:
        """True if the offset is no larger than ``limit`` either way."""
        return abs(self.offset) <= limit

    def describe(self) -> str:
        """``this machine's clock is 2.503s ahead of the database's (±0.4 ms)``."""
        seconds = self.offset.total_seconds()
        way = "ahead of" if seconds > 0 else "behind"
        margin = self.uncertainty.total_seconds() * 1000
        return (
            f"this machine's clock is {abs(seconds):.3f}s {way} the database's (±{margin:.1f} ms)"
        )


def estimate_offset(
    sent_at: datetime, database_time: datetime, received_at: datetime
) -> ClockOffset:
    """The offset from one exchange: our clock before asking, the database's answer, ours after.

    Args:
        sent_at: this machine's time just before the query was sent.
        database_time: the database's ``clock_timestamp()``.
        received_at: this machine's time just after the answer arrived.
    """
    half_trip = max(received_at - sent_at, timedelta(0)) / 2
    return ClockOffset(offset=sent_at + half_trip - database_time, uncertainty=half_trip)


def measure_offset(
    conn: Connection, *, samples: int = SAMPLES, now: Callable[[], datetime] | None = None
) -> ClockOffset:
    """Measure this machine's offset from the database's clock over ``conn``.

    Args:
        conn: any connection; the query reads the clock and nothing else.
        samples: how many exchanges; the one with the shortest round trip is kept.
        now: this machine's clock (`webhooks.clock.now` by default).
    """
    read_local = now or clock.now
    estimates = []
    for _ in range(max(1, samples)):
        sent_at = read_local()
        database_time = conn.execute(DATABASE_NOW).scalar_one()
        estimates.append(estimate_offset(sent_at, database_time, read_local()))
    return min(estimates, key=lambda e: e.uncertainty)


def warn_if_clock_offset(conn: Connection, log: logging.Logger) -> ClockOffset:
    """Measure the offset and log ``clock.offset_too_large`` if it is over the limit."""
    measured = measure_offset(conn)
    if not measured.is_within():
        log.warning(
            "clock.offset_too_large",
            extra={
                "offset_seconds": round(measured.offset.total_seconds(), 3),
                "limit_seconds": MAX_CLOCK_OFFSET.total_seconds(),
                "detail": f"{measured.describe()}; leases may be reclaimed early and "
                "deliveries sent twice: synchronise this machine's clock (NTP, chrony)",
            },
        )
    return measured
