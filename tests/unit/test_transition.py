"""Where an attempt leaves its delivery (`recording.decide`): pure, no Postgres.

Every outcome kind x every delivery state x both triggers x claim owned or not x positions
all over the 72 h retry window (before, at and past its end), each property stated
independently of the code that decides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.delivery import DeliveryOutcome
from webhooks.messages import Trigger
from webhooks.models import DELIVERY_STATES
from webhooks.recording import SETTLED_FROM, Health, Locked, Transition, decide, settled
from webhooks.schedule import RetryPolicy
from webhooks.settings import Settings

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SETTINGS = Settings.from_env({})
POLICY = RetryPolicy.from_settings(SETTINGS)
WINDOW = SETTINGS.retry_window
NO_RESPONSE = ("timeout", "connect", "dns", "tls", "blocked", "other")


@dataclass(frozen=True)
class Case:
    locked: Locked
    outcome: DeliveryOutcome
    trigger: Trigger
    started_at: datetime
    interpret: bool
    rand: float

    def decide(self) -> Transition:
        return decide(
            self.locked,
            self.outcome,
            self.trigger,
            SETTINGS,
            started_at=self.started_at,
            now=NOW,
            interpret=self.interpret,
            rand=lambda: self.rand,
        )


def outcome_of(
    status: int | None, error_kind: str | None, retry_after: str | None = None
) -> DeliveryOutcome:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return DeliveryOutcome(
        status=status,
        error_kind=error_kind,
        error_message=None if error_kind is None else f"{error_kind} (test)",
        duration=timedelta(milliseconds=12),
        response_headers=headers,
    )


outcomes = st.one_of(
    # a 2xx received in full
    st.builds(outcome_of, st.integers(200, 299), st.none()),
    # a 2xx cut short (deadline while reading the body)
    st.builds(outcome_of, st.integers(200, 299), st.just("timeout")),
    # an HTTP failure, some with a Retry-After the receiver may mean (429/503) or not
    st.builds(
        outcome_of,
        st.sampled_from([301, 400, 401, 404, 410, 429, 500, 502, 503]),
        st.none(),
        st.one_of(st.none(), st.sampled_from(["0", "5", "120", "86400", "garbage", "-1"])),
    ),
    # no response at all
    st.builds(outcome_of, st.none(), st.sampled_from(NO_RESPONSE)),
)
# Offsets of the first attempt's start before now, all over the window and past its end.
window_positions = st.one_of(
    st.none(),
    st.timedeltas(timedelta(0), WINDOW + timedelta(hours=2)),
    st.sampled_from([WINDOW - timedelta(minutes=1), WINDOW, WINDOW + timedelta(seconds=1)]),
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    attempts = draw(st.integers(0, 30))
    since = draw(window_positions)
    locked = Locked(
        attempt_count=attempts,
        failed_attempts=draw(st.integers(0, attempts)),
        first_attempt_at=None if since is None else NOW - since,
        state=draw(st.sampled_from(DELIVERY_STATES)),
        next_attempt_at=draw(st.one_of(st.none(), st.just(NOW + timedelta(minutes=5)))),
        owns_claim=draw(st.booleans()),
    )
    return Case(
        locked=locked,
        outcome=draw(outcomes),
        trigger=draw(st.sampled_from(Trigger)),
        started_at=NOW - draw(st.timedeltas(timedelta(0), timedelta(seconds=10))),
        interpret=draw(st.booleans()),
        rand=draw(st.floats(0, 1, exclude_max=True)),
    )


def moves_as_failure(case: Case) -> bool:
    return (
        not case.outcome.is_success
        and case.trigger is Trigger.SCHEDULED
        and case.locked.owns_claim
        and case.locked.state != "cancelled"
    )


@given(cases())
@settings(max_examples=200)
def test_every_attempt_is_counted_once(case: Case) -> None:
    assert case.decide().number == case.locked.attempt_count + 1


@given(cases())
@settings(max_examples=200)
def test_a_2xx_settles_the_delivery_whoever_sent_it_unless_it_was_cancelled(case: Case) -> None:
    transition = case.decide()
    if not case.outcome.is_success:
        return
    if case.locked.state == "cancelled":
        assert not transition.moves and transition.state == "cancelled"
        return
    assert transition.moves
    assert (transition.state, transition.next_attempt_at) == ("succeeded", None)
    assert transition.failed_attempts == case.locked.failed_attempts
    assert transition.first_attempt_at == case.locked.first_attempt_at
    assert not transition.exhausted


@given(cases())
@settings(max_examples=200)
def test_a_failure_not_ours_to_move_leaves_state_schedule_and_counts_alone(case: Case) -> None:
    if case.outcome.is_success or moves_as_failure(case):
        return
    transition = case.decide()
    assert not transition.moves
    assert transition.state == case.locked.state
    assert transition.next_attempt_at == case.locked.next_attempt_at
    assert transition.failed_attempts == case.locked.failed_attempts
    assert transition.first_attempt_at == case.locked.first_attempt_at
    assert not transition.exhausted


@given(cases())
@settings(max_examples=200)
def test_a_failure_under_the_current_scheduled_claim_follows_the_schedule_in_the_window(
    case: Case,
) -> None:
    if not moves_as_failure(case):
        return
    transition = case.decide()
    failures = case.locked.failed_attempts + 1
    first = case.locked.first_attempt_at or case.started_at
    window_end = first + WINDOW
    assert transition.moves
    assert transition.failed_attempts == failures
    assert transition.first_attempt_at == first
    gives_up = NOW + POLICY.delay_after(failures) > window_end
    if gives_up:
        assert (transition.state, transition.next_attempt_at) == ("failed", None)
        assert transition.exhausted == (case.locked.state != "failed")
        return
    assert transition.state == "pending" and not transition.exhausted
    assert transition.next_attempt_at is not None
    assert NOW + POLICY.delay_after(failures) <= transition.next_attempt_at <= window_end
    if not case.interpret or case.outcome.status not in (429, 503):
        # Only the jitter stretches the step; a Retry-After is not read.
        stretched = POLICY.delay_after(failures) * (1 + POLICY.jitter)
        assert transition.next_attempt_at <= NOW + stretched


@given(cases())
@settings(max_examples=200)
def test_a_retry_after_on_429_or_503_pushes_the_next_attempt_later_never_past_the_window(
    case: Case,
) -> None:
    retry_after = case.outcome.retry_after
    if not (moves_as_failure(case) and case.interpret and retry_after and retry_after.isdigit()):
        return
    if case.outcome.status not in (429, 503):
        return
    transition = case.decide()
    if transition.next_attempt_at is None:
        return
    first = case.locked.first_attempt_at or case.started_at
    wanted = NOW + timedelta(seconds=int(retry_after))
    assert transition.next_attempt_at >= min(wanted, first + WINDOW)


@given(cases())
@settings(max_examples=200)
def test_a_replay_is_finished_with_how_it_went_and_a_scheduled_attempt_finishes_none(
    case: Case,
) -> None:
    expected = None
    if case.trigger is Trigger.REPLAY:
        expected = "succeeded" if case.outcome.is_success else "failed"
    assert case.decide().replay_outcome == expected


@given(cases())
@settings(max_examples=200)
def test_health_learns_from_every_interpreted_attempt_except_a_cancelled_deliverys(
    case: Case,
) -> None:
    health = case.decide().health
    if not case.interpret or case.locked.state == "cancelled":
        assert health is Health.UNTOUCHED
    else:
        assert health is (Health.SUCCEEDED if case.outcome.is_success else Health.FAILED)


@given(cases())
@settings(max_examples=200)
def test_the_batched_settle_writes_what_decide_says_for_a_2xx_under_a_current_claim(
    case: Case,
) -> None:
    # `SETTLE_SUCCESSES` applies to a 2xx of a scheduled claim that still owns a
    # `delivering` row; it keeps the row's counts and adds one attempt. Whatever those
    # counts, `decide` on the row must agree with what the statement writes.
    if not case.outcome.is_success:
        return
    locked = Locked(**{**case.locked.__dict__, "state": "delivering", "owns_claim": True})
    full = decide(
        locked, case.outcome, Trigger.SCHEDULED, SETTINGS, started_at=case.started_at, now=NOW
    )
    batch = settled(SETTINGS, case.outcome, NOW)
    assert SETTLED_FROM.state == "delivering" and SETTLED_FROM.owns_claim
    for field in ("moves", "state", "next_attempt_at", "replay_outcome", "health", "exhausted"):
        assert getattr(full, field) == getattr(batch, field), field
    assert (full.number, full.failed_attempts, full.first_attempt_at) == (
        locked.attempt_count + 1,
        locked.failed_attempts,
        locked.first_attempt_at,
    )
