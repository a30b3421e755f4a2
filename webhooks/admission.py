"""Which due deliveries may start now: per-endpoint isolation, decided without I/O.

A slow or dead endpoint must not starve the healthy ones of worker threads. Three rules,
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

Replays pass the same rules, counted in the same in-flight totals, and **take turns** with
scheduled work (`take_turns`, `batch_quota`): at each endpoint the two kinds alternate, and
neither kind takes more than half of a batch while the other has due rows left over (the
unused share of one goes to the other). A bulk replay to one slow endpoint therefore never
holds the batch, nor that endpoint's slots, against its own or anyone's scheduled work.

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

from webhooks.messages import Trigger
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
    replay_id: int | None = None

    @property
    def trigger(self) -> Trigger:
        """`Trigger.REPLAY` for a queued replay, `Trigger.SCHEDULED` for a due delivery."""
        return Trigger.SCHEDULED if self.replay_id is None else Trigger.REPLAY

    @property
    def key(self) -> str:
        """What an `Admission` names this row by: the delivery id, or the replay's."""
        return self.delivery_id if self.replay_id is None else f"replay:{self.replay_id}"


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


def batch_quota(limit: int, scheduled: int, replays: int) -> dict[str, int]:
    """How many rows of each kind one batch may claim.

    Each kind is guaranteed half the batch when it has that many due rows; what one kind
    leaves unused goes to the other, so a batch is never held back for nothing.

    Args:
        limit: the batch size.
        scheduled: due scheduled rows found.
        replays: due replays found.
    """
    half = limit // 2
    return {
        Trigger.SCHEDULED: limit - min(replays, limit - half),
        Trigger.REPLAY: limit - min(scheduled, half),
    }


def take_turns(
    scheduled: Sequence[Candidate],
    replays: Sequence[Candidate],
    last_turn: Mapping[str, str] | None = None,
) -> list[Candidate]:
    """Order due rows so that, at each endpoint, replays and scheduled rows alternate.

    Each kind keeps its own order (oldest first). An endpoint starts with the kind that did
    not go last there (``last_turn``, from the previous batch), so an endpoint with one free
    slot per batch serves the two kinds in turn instead of always the same one. Rows are
    then taken turn by turn across endpoints: every endpoint's first row, then every
    endpoint's second, and so on.

    Args:
        scheduled: due deliveries, oldest first.
        replays: due replays, oldest first.
        last_turn: per endpoint id, the trigger of the last row claimed there.
    """
    last_turn = last_turn or {}
    by_endpoint: dict[str, dict[str, list[Candidate]]] = {}
    for candidate in [*scheduled, *replays]:
        kinds = by_endpoint.setdefault(
            candidate.endpoint_id, {Trigger.SCHEDULED: [], Trigger.REPLAY: []}
        )
        kinds[candidate.trigger].append(candidate)
    turns: dict[str, int] = {}
    for endpoint, kinds in by_endpoint.items():
        first = (
            Trigger.REPLAY if last_turn.get(endpoint) == Trigger.SCHEDULED else Trigger.SCHEDULED
        )
        second = Trigger.REPLAY if first is Trigger.SCHEDULED else Trigger.SCHEDULED
        lanes = (kinds[first], kinds[second])
        turn = 0
        for i in range(max(len(lanes[0]), len(lanes[1]))):
            for lane in lanes:
                if i < len(lane):
                    turns[lane[i].key] = turn
                    turn += 1
    position = {c.key: i for i, c in enumerate([*scheduled, *replays])}
    return sorted([*scheduled, *replays], key=lambda c: (turns[c.key], position[c.key]))


def admit(
    candidates: Sequence[Candidate],
    in_flight: Mapping[str, int],
    policy: IsolationPolicy,
    now: datetime,
    rates: Mapping[str, RateLimit] | None = None,
    quota: Mapping[str, int] | None = None,
) -> Admission:
    """Decide which candidates start now. Rows are named by their `Candidate.key`.

    Args:
        candidates: due rows, oldest first (or in turns: `take_turns`).
        in_flight: attempts in flight per endpoint id, across all workers, replays included.
        policy: the limits.
        now: the time of the decision.
        rates: the rate limits of the rate-limited endpoints among the candidates, read
            under their row locks.
        quota: at most this many claims per trigger (`batch_quota`); a row over its kind's
            quota stays due and counts as waiting.
    """
    rates = rates or {}
    claimed: Counter[str] = Counter()
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
        key = candidate.key
        if candidate.breaker_open_until is not None and candidate.breaker_open_until > now:
            defer[key] = candidate.breaker_open_until
            continue
        if quota is not None and claimed[candidate.trigger] >= quota.get(candidate.trigger, 0):
            waiting += 1
            continue
        limit = policy.limit(candidate)
        if running[endpoint] >= limit:
            if limit < policy.concurrency:  # half-open: only the probe may be out
                held[endpoint] += 1
                defer[key] = now + policy.recheck_step * held[endpoint]
            else:
                waiting += 1
            continue
        if endpoint in rates:
            slot = first_slot[endpoint] + rates[endpoint].interval * (
                sent[endpoint] + reserved[endpoint]
            )
            if slot > now:
                reserved[endpoint] += 1
                defer[key] = slot
                continue
            sent[endpoint] += 1
        running[endpoint] += 1
        claimed[candidate.trigger] += 1
        claim.append(key)
    # The next free slot follows the ones handed out now only: a deferred row, due again at
    # its slot, must find that slot free.
    next_send_at = {
        endpoint: first_slot[endpoint] + rates[endpoint].interval * sent[endpoint]
        for endpoint in sent
    }
    window_end = {c.key: c.window_end for c in candidates}
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
