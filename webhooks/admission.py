"""Which due deliveries may start now: per-endpoint isolation, decided without I/O.

A slow or dead endpoint must not starve the healthy ones of worker threads. Two rules,
applied by the dispatcher to each batch of due rows (oldest first):

- **Concurrency cap.** At most `WEBHOOKS_ENDPOINT_CONCURRENCY` attempts per endpoint are in
  flight at once, counted across every worker.
- **Circuit breaker.** After `WEBHOOKS_BREAKER_THRESHOLD` attempts in a row that got no HTTP
  response at all (timeout, connect, dns, tls), the endpoint's breaker is open for
  `WEBHOOKS_BREAKER_COOLDOWN`: nothing is sent to it. Then it is half-open: one probe at a
  time, until a response closes it or a failure opens it again.

- **Rate limit** (optional, per endpoint, requests per second). Send slots are handed out
  from the endpoint's ``next_send_at`` under its row lock, as a token bucket holding at most
  one second of requests, so the limit holds across every dispatcher and worker. A row over
  the limit is deferred to its slot: it waits in Postgres, never in a worker's memory.

Nothing is dropped. A row of a healthy endpoint that is at its cap stays due and waits for
a slot (the dispatcher's query skips endpoints already at their cap, so the rows behind them
are reached, and it looks again within `CAPACITY_RECHECK`). A row of an endpoint whose breaker
tripped is *deferred*: its `next_attempt_at` moves to when the breaker closes (or, past the
half-open probe, one step later), so a dead endpoint's backlog leaves the front of the due
index instead of being walked over at every claim. The retry window holds here too: a row
whose deferral would take it past its window's end (72 h after its first attempt) is
*expired* instead, i.e. it fails as if its last retry had; a row never attempted yet (held
by a disabled endpoint, say) has no window yet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from webhooks.settings import Settings

# How far apart the rows of a half-open endpoint come back while its probe is out.
RECHECK_STEP = timedelta(seconds=1)
# How soon the dispatcher looks again when due rows are waiting only for a free slot.
CAPACITY_RECHECK = timedelta(milliseconds=50)


@dataclass(frozen=True)
class Candidate:
    """A due delivery, with the state of its endpoint."""

    delivery_id: str
    endpoint_id: str
    consecutive_failures: int
    breaker_open_until: datetime | None
    window_end: datetime | None = None


# A rate-limited endpoint that was idle may receive up to this much of its rate at once.
BURST = timedelta(seconds=1)


@dataclass(frozen=True)
class RateLimit:
    """An endpoint's rate limit and the earliest time its next request may start."""

    per_second: float
    next_send_at: datetime | None

    @property
    def interval(self) -> timedelta:
        """Time between two requests at the limit."""
        return timedelta(seconds=1 / self.per_second)

    def first_slot(self, now: datetime) -> datetime:
        """When the first free slot starts; idle time earns at most `BURST` of requests."""
        burst = max(1.0, self.per_second * BURST.total_seconds())
        earliest = now - self.interval * (burst - 1)
        return max(self.next_send_at or earliest, earliest)


@dataclass(frozen=True)
class IsolationPolicy:
    """The per-endpoint limits."""

    concurrency: int
    breaker_threshold: int
    recheck_step: timedelta = RECHECK_STEP

    @classmethod
    def from_settings(cls, settings: Settings) -> IsolationPolicy:
        """Build the policy from `WEBHOOKS_ENDPOINT_CONCURRENCY` and the breaker settings."""
        return cls(settings.endpoint_concurrency, settings.breaker_threshold)

    def limit(self, candidate: Candidate) -> int:
        """How many attempts the candidate's endpoint may have in flight."""
        half_open = candidate.consecutive_failures >= self.breaker_threshold
        return 1 if half_open else self.concurrency


@dataclass(frozen=True)
class Admission:
    """The decision for one batch: rows to claim now, rows to look at again later, and how
    many rows stay due waiting for a free slot of their (healthy) endpoint."""

    claim: tuple[str, ...] = ()
    defer: dict[str, datetime] = field(default_factory=dict)
    waiting: int = 0
    next_send_at: dict[str, datetime] = field(default_factory=dict)
    expire: tuple[str, ...] = ()


def admit(
    candidates: Sequence[Candidate],
    in_flight: Mapping[str, int],
    policy: IsolationPolicy,
    now: datetime,
    rates: Mapping[str, RateLimit] | None = None,
) -> Admission:
    """Decide which candidates start now.

    Args:
        candidates: due rows, oldest first.
        in_flight: attempts in flight per endpoint id, across all workers.
        policy: the limits.
        now: the time of the decision.
        rates: the rate limits of the rate-limited endpoints among the candidates, read
            under their row locks.
    """
    rates = rates or {}
    running: Counter[str] = Counter(in_flight)
    held: Counter[str] = Counter()
    first_slot = {endpoint: rate.first_slot(now) for endpoint, rate in rates.items()}
    sent: Counter[str] = Counter()  # slots handed out now, per rate-limited endpoint
    reserved: Counter[str] = Counter()  # slots promised to deferred rows
    claim: list[str] = []
    defer: dict[str, datetime] = {}
    waiting = 0
    for candidate in candidates:
        endpoint = candidate.endpoint_id
        if candidate.breaker_open_until is not None and candidate.breaker_open_until > now:
            defer[candidate.delivery_id] = candidate.breaker_open_until
            continue
        limit = policy.limit(candidate)
        if running[endpoint] >= limit:
            if limit < policy.concurrency:  # half-open: only the probe may be out
                held[endpoint] += 1
                defer[candidate.delivery_id] = now + policy.recheck_step * held[endpoint]
            else:
                waiting += 1
            continue
        if endpoint in rates:
            slot = first_slot[endpoint] + rates[endpoint].interval * (
                sent[endpoint] + reserved[endpoint]
            )
            if slot > now:
                reserved[endpoint] += 1
                defer[candidate.delivery_id] = slot
                continue
            sent[endpoint] += 1
        running[endpoint] += 1
        claim.append(candidate.delivery_id)
    # The next free slot follows the ones handed out now only: a deferred row, due again at
    # its slot, must find that slot free.
    next_send_at = {
        endpoint: first_slot[endpoint] + rates[endpoint].interval * sent[endpoint]
        for endpoint in sent
    }
    window_end = {c.delivery_id: c.window_end for c in candidates}
    expire = tuple(
        delivery
        for delivery, at in defer.items()
        if (end := window_end[delivery]) is not None and at > end
    )
    for delivery in expire:
        del defer[delivery]
    return Admission(
        claim=tuple(claim),
        defer=defer,
        waiting=waiting,
        next_send_at=next_send_at,
        expire=expire,
    )
