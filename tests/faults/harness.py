"""The fault tests' shared harness: a deployment, a workload, and the ledger that checks it.

A `Deployment` is one isolated installation (its own schema and queue) with its processes
and a `Receiver`. `publish_workload` registers a few endpoints with different event-type
filters and publishes a few hundred events. `Ledger.settle` waits until every delivery has
succeeded and then reconciles what the receiver saw with what Postgres stored:

- every event reached every subscribed endpoint at least once, and no other endpoint;
- every copy of an event carries the event's ``webhook-id`` and the very same body;
- every delivery ended ``succeeded``;
- every request that arrived has its stored attempt (matched on endpoint, ``webhook-id``,
  ``webhook-timestamp`` and ``webhook-signature``), except requests a `Fault` is allowed to
  lose: those that were in flight in a worker that was killed before it could record (a
  request such a worker was still writing arrives torn, and is not a request at all);
- a delivery was sent again only after its previous request was recorded as a failure, or
  after that request's record was lost and its lease expired (the re-send comes at least one
  lease later).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.processes import Stack
from tests.support.receivers import Receiver, Request
from webhooks.database import sql
from webhooks.endpoints import add_endpoint
from webhooks.event_types import matches
from webhooks.outbox import publish
from webhooks.recording import renew_below
from webhooks.settings import Settings

# Three endpoints with different filters, so "every subscribed endpoint" means something.
ENDPOINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/all", ()),
    ("/deploy", ("deployment.*",)),
    ("/picky", ("project.updated", "deployment.succeeded")),
)
EVENT_TYPES = ("deployment.succeeded", "deployment.build.failed", "project.updated")
PUBLISH_CHUNK = 10
# A re-send after a lost record comes one lease after the claim. The worker sends under the
# dispatcher's lease while at least `renew_below` of it is left (renewing it first otherwise),
# so the re-send follows the lost request by at least that; the request reaches the receiver a
# moment after it was sent, hence a little slack.
LEASE_SLACK_SECONDS = 0.5
QUIET_SECONDS = 1.0
ARRIVAL_SLACK_SECONDS = 0.25


@dataclass(frozen=True)
class Endpoint:
    id: str
    path: str
    filters: tuple[str, ...]


@dataclass
class Deployment:
    """One isolated installation under test."""

    env: dict[str, str]
    settings: Settings
    engine: Engine
    stack: Stack
    receiver: Receiver
    project: str
    endpoints: list[Endpoint] = field(default_factory=list)
    events: dict[str, str] = field(default_factory=dict)  # event id -> type

    def expected_pairs(self) -> set[tuple[str, str]]:
        return {
            (event_id, endpoint.id)
            for event_id, event_type in self.events.items()
            for endpoint in self.endpoints
            if matches(endpoint.filters, event_type)
        }

    def dispatcher_logs(self) -> str:
        return "\n".join(p.output() for p in self.stack.processes if p.name == "dispatcher")

    def leases_expired(self) -> int:
        """How many leases the dispatchers reaped (their `dispatcher.leases_expired` lines)."""
        return sum(
            int(n)
            for n in re.findall(r"dispatcher\.leases_expired.*?count=(\d+)", self.dispatcher_logs())
        )


def publish_workload(
    deployment: Deployment, events: int, *, delay: float = 0.0, chunk: int = PUBLISH_CHUNK
) -> None:
    """Register `ENDPOINTS` (once) and publish ``events`` events of mixed types.

    Args:
        deployment: where to publish.
        events: how many events.
        delay: seconds each endpoint takes to answer (a slow endpoint keeps attempts in
            flight, so a fault finds some).
        chunk: events per publishing transaction.
    """
    receiver, settings = deployment.receiver, deployment.settings
    with deployment.engine.begin() as conn:
        for path, filters in ENDPOINTS if not deployment.endpoints else ():
            endpoint, _ = add_endpoint(
                conn, settings, url=receiver.url(path), project_id=deployment.project,
                event_types=filters,
            )  # fmt: skip
            deployment.endpoints.append(Endpoint(endpoint.id, path, filters))
            if delay:
                receiver.delay(path, delay)
    first = len(deployment.events)
    for start in range(first, first + events, chunk):
        with deployment.engine.begin() as conn:
            for i in range(start, min(start + chunk, first + events)):
                event_type = EVENT_TYPES[i % len(EVENT_TYPES)]
                event_id = publish(
                    conn,
                    project_id=deployment.project,
                    type=event_type,
                    data={"i": i, "deployment_id": f"dep_{i}"},
                    settings=settings,
                )
                deployment.events[event_id] = event_type


@dataclass(frozen=True)
class Fault:
    """A fault injected at ``at`` (``time.time()``).

    ``loses_records``: requests sent before ``done_at`` (when the killed worker was seen
    dead) may have no stored attempt, at most ``in_flight_bound`` of them: the worker died
    before it could record them.
    """

    name: str
    at: float
    loses_records: bool = False
    in_flight_bound: int = 0
    done_at: float | None = None

    def may_have_lost(self, request: Request) -> bool:
        # A request the worker wrote just before it died can be read by the receiver a
        # moment after the kill: a little slack past the moment it was seen dead.
        end = (self.done_at or self.at) + ARRIVAL_SLACK_SECONDS
        return self.loses_records and request.arrived_at <= end


@dataclass(frozen=True)
class StoredAttempt:
    delivery_id: str
    event_id: str
    endpoint_id: str
    started_at: float
    status: int | None
    error_kind: str | None
    headers: dict[str, str]

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.error_kind


@dataclass
class Figures:
    """What one fault test reports."""

    events: int
    deliveries: int
    requests: int
    duplicates: int
    resent_after_failure: int
    resent_after_lost_record: int
    unrecorded_requests: int
    torn_requests: int
    leases_expired: int
    # Time to recover, three ways: the longest pause in arrivals after the fault (how long
    # delivery stopped), the longest wait of a lost attempt for its re-send (one lease, plus
    # a new worker's start), and from the fault until every delivery had succeeded.
    stall_seconds: float
    resend_lag_seconds: float
    drain_seconds: float

    def report(
        self, name: str, record_figure: Callable[[str, object], None], *, run_seconds: float
    ) -> None:
        """Print the figures (``pytest -s``) and attach them to the test's JUnit record."""
        for key, value in vars(self).items():
            record_figure(key, value)
        record_figure("run_seconds", round(run_seconds, 1))
        print(
            f"\n[{name}] events={self.events} deliveries={self.deliveries} "
            f"requests={self.requests} duplicates={self.duplicates} "
            f"(after failure {self.resent_after_failure}, after lost record "
            f"{self.resent_after_lost_record}) unrecorded={self.unrecorded_requests} "
            f"torn={self.torn_requests} "
            f"leases_expired={self.leases_expired} stall={self.stall_seconds:.1f}s "
            f"resend_lag={self.resend_lag_seconds:.1f}s drain={self.drain_seconds:.1f}s "
            f"run={run_seconds:.1f}s"
        )


class Ledger:
    """Reconciles the receiver's requests with the stored deliveries and attempts."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    @property
    def by_path(self) -> dict[str, Endpoint]:
        return {e.path: e for e in self.deployment.endpoints}

    # -- reading -------------------------------------------------------------------------------

    def _unsettled(self) -> int | None:
        """Deliveries not yet succeeded (None while Postgres cannot be read)."""
        d = self.deployment
        try:
            with d.engine.connect() as conn:
                row = conn.execute(
                    sql(
                        "SELECT count(*) AS total, count(*) FILTER (WHERE state <> 'succeeded') "
                        "AS open FROM {s}.deliveries",
                        d.settings.db_schema,
                    )
                ).one()
        except sa.exc.DBAPIError:
            return None
        return int(row.open) if row.total == len(d.expected_pairs()) else None

    def _read(self) -> tuple[dict[tuple[str, str], str], list[StoredAttempt], dict[str, bytes]]:
        d = self.deployment
        schema = d.settings.db_schema
        with d.engine.connect() as conn:
            states = {
                (row.event_id, row.endpoint_id): row.state
                for row in conn.execute(
                    sql("SELECT event_id, endpoint_id, state FROM {s}.deliveries", schema)
                )
            }
            attempts = [
                StoredAttempt(
                    delivery_id=row.delivery_id,
                    event_id=row.event_id,
                    endpoint_id=row.endpoint_id,
                    started_at=row.started_at.timestamp(),
                    status=row.response_status,
                    error_kind=row.error_kind,
                    headers=_as_dict(row.request_headers),
                )
                for row in conn.execute(
                    sql(
                        "SELECT delivery_id, event_id, endpoint_id, started_at, "
                        "response_status, error_kind, request_headers FROM {s}.attempts "
                        "ORDER BY started_at, id",
                        schema,
                    )
                )
            ]
            payloads = {
                row.id: row.payload.encode()
                for row in conn.execute(sql("SELECT id, payload FROM {s}.events", schema))
            }
        return states, attempts, payloads

    def _key_of_request(self, request: Request) -> tuple[str, str, str, str]:
        endpoint = self.by_path[request.path]
        h = request.headers
        return (endpoint.id, request.webhook_id, h.get("webhook-timestamp", ""),
                h.get("webhook-signature", ""))  # fmt: skip

    @staticmethod
    def _key_of_attempt(attempt: StoredAttempt) -> tuple[str, str, str, str]:
        h = attempt.headers
        return (attempt.endpoint_id, h.get("webhook-id", ""), h.get("webhook-timestamp", ""),
                h.get("webhook-signature", ""))  # fmt: skip

    def _match(
        self, requests: Sequence[Request], attempts: Sequence[StoredAttempt]
    ) -> tuple[list[tuple[Request, StoredAttempt | None]], list[StoredAttempt]]:
        """Pair each request with its stored attempt (None: not recorded); and the attempts
        that match no request."""
        stored: dict[tuple[str, str, str, str], list[StoredAttempt]] = defaultdict(list)
        for attempt in attempts:
            stored[self._key_of_attempt(attempt)].append(attempt)
        pairs: list[tuple[Request, StoredAttempt | None]] = []
        for request in sorted(requests, key=lambda r: r.arrived_at):
            bucket = stored.get(self._key_of_request(request))
            pairs.append((request, bucket.pop(0) if bucket else None))
        phantom = [a for bucket in stored.values() for a in bucket]
        return pairs, phantom

    def claimed(self) -> int:
        """How many deliveries are claimed right now (state ``delivering``)."""
        d = self.deployment
        with d.engine.connect() as conn:
            return int(
                conn.execute(
                    sql("SELECT count(*) FROM {s}.deliveries WHERE state = 'delivering'",
                        d.settings.db_schema)
                ).scalar_one()
            )  # fmt: skip

    def unrecorded(self, before: float) -> list[Request]:
        """Requests that arrived before ``before`` and have no stored attempt (yet)."""
        requests = [r for r in self.deployment.receiver.received() if r.arrived_at <= before]
        try:
            _, attempts, _ = self._read()
        except sa.exc.DBAPIError:
            return requests
        pairs, _ = self._match(requests, attempts)
        return [r for r, a in pairs if a is None]

    # -- settling and checking -----------------------------------------------------------------

    def settle(self, faults: Sequence[Fault], *, timeout: float) -> Figures:
        """Wait until every delivery succeeded and the receiver is quiet, then check all."""
        d = self.deployment
        first_fault = min((f.at for f in faults), default=time.time())
        deadline = time.monotonic() + timeout
        while (unsettled := self._unsettled()) != 0:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{unsettled} of {len(d.expected_pairs())} deliveries still not succeeded "
                    f"{timeout:.0f}s later; logs:\n{d.stack.logs(tail=3000)}"
                )
            time.sleep(0.1)
        recovered_at = time.time()
        # Late arrivals (a stale message sent after all) must be seen before we judge: wait
        # until no request has arrived and none is unanswered for a moment.
        quiet_since = time.monotonic()
        seen = -1
        while time.monotonic() - quiet_since < QUIET_SECONDS:
            requests = d.receiver.received()
            if len(requests) != seen or any(r.answered_at is None for r in requests):
                seen, quiet_since = len(requests), time.monotonic()
            if time.monotonic() > deadline + 10:
                break
            time.sleep(0.05)
        # Attempts are recorded after the answer: give the last ones a moment to land.
        for _ in range(20):
            with contextlib.suppress(AssertionError):
                return self.check(faults, drain_seconds=recovered_at - first_fault)
            time.sleep(0.1)
        return self.check(faults, drain_seconds=recovered_at - first_fault)

    def check(self, faults: Sequence[Fault], *, drain_seconds: float) -> Figures:
        d = self.deployment
        requests = d.receiver.received()
        states, attempts, payloads = self._read()
        expected = d.expected_pairs()

        assert set(states) == expected, "publish did not create one delivery per subscription"
        not_succeeded = {pair: s for pair, s in states.items() if s != "succeeded"}
        assert not not_succeeded, f"deliveries not succeeded: {list(not_succeeded.items())[:5]}"

        unknown = [r for r in requests if r.path not in self.by_path]
        assert not unknown, f"requests to paths nobody registered: {[r.path for r in unknown]}"
        by_pair: dict[tuple[str, str], list[tuple[Request, StoredAttempt | None]]] = defaultdict(
            list
        )
        pairs, phantom = self._match(requests, attempts)
        for request, attempt in pairs:
            by_pair[(request.webhook_id, self.by_path[request.path].id)].append((request, attempt))

        missing = expected - set(by_pair)
        assert not missing, f"{len(missing)} subscriptions never received their event: " + str(
            sorted(missing)[:5]
        )
        extra = set(by_pair) - expected
        assert not extra, f"events sent to endpoints not subscribed to them: {sorted(extra)[:5]}"
        wrong_body = [r.webhook_id for r in requests if r.body != payloads.get(r.webhook_id)]
        assert not wrong_body, f"copies whose body differs from the event's: {wrong_body[:5]}"
        assert not phantom, f"stored attempts that match no request that arrived: {phantom[:3]}"

        unrecorded = [r for r, a in pairs if a is None]
        unexplained = [r for r in unrecorded if not _lost_by(r, faults)]
        assert not unexplained, (
            f"{len(unexplained)} requests arrived but have no stored attempt, and no fault "
            f"explains it: {[(r.path, r.webhook_id, r.arrived_at) for r in unexplained[:5]]}"
        )
        # A worker killed while writing a request leaves it torn (body cut short): it never
        # was a request, but only a killed worker may explain one.
        torn = d.receiver.torn()
        assert all(_lost_by(r, faults) for r in torn), f"torn requests: {torn[:3]}"
        bound = sum(f.in_flight_bound for f in faults if f.loses_records)
        assert len(unrecorded) + len(torn) <= bound, (
            f"{len(unrecorded)} unrecorded and {len(torn)} torn requests, more than the {bound} "
            "attempts the killed workers could have had in flight"
        )

        after_failure = after_lost = 0
        resend_lag = 0.0
        wrong_resends = []
        for pair, sent in by_pair.items():
            for (request, attempt), (later, _) in itertools.pairwise(sent):
                if attempt is not None and not attempt.succeeded:
                    after_failure += 1
                elif attempt is None and later.arrived_at - request.arrived_at >= (
                    renew_below(d.settings).total_seconds() - LEASE_SLACK_SECONDS
                ):
                    after_lost += 1
                    resend_lag = max(resend_lag, later.arrived_at - request.arrived_at)
                else:
                    wrong_resends.append((pair, request.arrived_at, later.arrived_at, attempt))
        assert not wrong_resends, (
            "deliveries sent again although their previous request succeeded and was recorded, "
            f"or before its lease could have expired: {wrong_resends[:5]}"
        )
        succeeded_attempts = {(a.event_id, a.endpoint_id) for a in attempts if a.succeeded}
        assert succeeded_attempts == expected, "a succeeded delivery without a 2xx attempt"

        return Figures(
            events=len(d.events),
            deliveries=len(expected),
            requests=len(requests),
            duplicates=len(requests) - len(by_pair),
            resent_after_failure=after_failure,
            resent_after_lost_record=after_lost,
            unrecorded_requests=len(unrecorded),
            torn_requests=len(torn),
            leases_expired=d.leases_expired(),
            stall_seconds=round(_longest_pause(requests, faults), 2),
            resend_lag_seconds=round(resend_lag, 2),
            drain_seconds=round(drain_seconds, 2),
        )


def _as_dict(headers: object) -> dict[str, str]:
    value = json.loads(headers) if isinstance(headers, str | bytes) else headers
    assert isinstance(value, dict)
    return value


def _longest_pause(requests: Sequence[Request], faults: Sequence[Fault]) -> float:
    """The longest time without a new request arriving, from the first fault on."""
    start = min((f.at for f in faults), default=0.0)
    arrivals = sorted(r.arrived_at for r in requests if r.arrived_at >= start)
    return max((b - a for a, b in itertools.pairwise([start, *arrivals])), default=0.0)


def _lost_by(request: Request, faults: Sequence[Fault]) -> bool:
    return any(f.may_have_lost(request) for f in faults)
