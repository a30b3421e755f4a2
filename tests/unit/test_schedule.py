"""The retry schedule: pure maths, frozen time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from webhooks import clock
from webhooks.schedule import RetryPolicy, decide_retry, parse_retry_after
from webhooks.settings import Settings

T0 = datetime(2026, 4, 28, 14, 2, 11, tzinfo=UTC)


def default_policy(jitter: float = 0.0) -> RetryPolicy:
    settings = Settings.from_env({"WEBHOOKS_RETRY_JITTER": str(jitter)})
    return RetryPolicy.from_settings(settings)


def simulate(policy: RetryPolicy, rand: float = 0.0) -> list[timedelta]:
    """Attempt start times (as offsets from the first) when every attempt fails instantly."""
    with freeze_time(T0) as frozen:
        first = clock.now()
        starts = [timedelta(0)]
        failures = 0
        while True:
            failures += 1
            decision = decide_retry(
                policy,
                failures=failures,
                first_attempt_at=first,
                now=clock.now(),
                rand=lambda: rand,
            )
            if decision.gives_up:
                return starts
            assert decision.next_attempt_at is not None
            frozen.move_to(decision.next_attempt_at)
            starts.append(clock.now() - first)


def test_default_schedule_makes_eleven_attempts_within_72_hours() -> None:
    h, m = 3600, 60
    expected = [
        0,
        1 * m,
        6 * m,
        36 * m,
        2 * h + 36 * m,
        8 * h + 36 * m,
        20 * h + 36 * m,
        32 * h + 36 * m,
        44 * h + 36 * m,
        56 * h + 36 * m,
        68 * h + 36 * m,
    ]
    assert simulate(default_policy()) == [timedelta(seconds=s) for s in expected]


def test_jitter_only_ever_delays_and_by_at_most_ten_percent() -> None:
    policy = default_policy(jitter=0.1)
    for failures, base in enumerate(policy.schedule, start=1):
        low = decide_retry(policy, failures=failures, first_attempt_at=T0, now=T0, rand=lambda: 0.0)
        high = decide_retry(
            policy, failures=failures, first_attempt_at=T0, now=T0, rand=lambda: 0.999999
        )
        assert low.next_attempt_at == T0 + base
        assert high.next_attempt_at is not None
        assert T0 + base < high.next_attempt_at <= T0 + base * 1.1


def test_full_jitter_never_schedules_past_the_window() -> None:
    starts = simulate(default_policy(jitter=0.1), rand=0.999999)
    assert starts[-1] <= timedelta(hours=72)
    assert len(starts) >= 10


def test_no_attempt_is_scheduled_past_the_window_even_when_the_last_step_repeats() -> None:
    policy = RetryPolicy((timedelta(seconds=1), timedelta(seconds=2)), timedelta(seconds=5), 0.0)
    # 0, 1, 3, 5 (the window's edge is allowed), then 7 > 5: give up.
    assert simulate(policy) == [timedelta(seconds=s) for s in (0, 1, 3, 5)]


def test_retry_after_pushes_the_next_attempt_later() -> None:
    decision = decide_retry(
        default_policy(),
        failures=1,
        first_attempt_at=T0,
        now=T0,
        retry_after=timedelta(minutes=10),
    )
    assert decision.next_attempt_at == T0 + timedelta(minutes=10)


def test_retry_after_never_brings_the_next_attempt_earlier() -> None:
    decision = decide_retry(
        default_policy(),
        failures=3,
        first_attempt_at=T0,
        now=T0,
        retry_after=timedelta(seconds=5),
    )
    assert decision.next_attempt_at == T0 + timedelta(minutes=30)


def test_retry_after_is_clamped_to_the_window() -> None:
    decision = decide_retry(
        default_policy(),
        failures=1,
        first_attempt_at=T0,
        now=T0,
        retry_after=timedelta(days=30),
    )
    assert decision.next_attempt_at == T0 + timedelta(hours=72)


@pytest.mark.parametrize(
    ("status", "value", "expected"),
    [
        (429, "120", timedelta(seconds=120)),
        (503, "0", timedelta(0)),
        (429, "Tue, 28 Apr 2026 14:12:11 GMT", timedelta(minutes=10)),
        (429, "Tue, 28 Apr 2026 13:00:00 GMT", timedelta(0)),
        (500, "120", None),
        (429, None, None),
        (429, "soon", None),
        (429, "-5", None),
    ],
)
def test_retry_after_is_read_from_429_and_503_only(
    status: int, value: str | None, expected: timedelta | None
) -> None:
    assert parse_retry_after(status, value, now=T0, limit=WINDOW) == expected


WINDOW = timedelta(hours=72)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Each of these used to raise while the attempt was being recorded (OverflowError,
        # ValueError), which rolled the recording back and looped the delivery.
        ("999999999999", WINDOW),
        ("9" * 5000, WINDOW),
        ("\xb2", None),  # "²": str.isdigit() says yes, int() says no
        ("\u0661\u0662", None),  # Arabic-Indic digits
        ("-1", None),
        ("1e9", None),
        ("Mon, 01 Jan 1900 00:00:00 GMT", timedelta(0)),
        ("Wed, 01 Jan 3000 00:00:00 GMT", WINDOW),
        ("Fri, 31 Dec 9999 23:59:59 GMT", WINDOW),
        ("x" * 8192, None),
        ("Tue, 99 Foo 2026 99:99:99 GMT", None),
        (" 120 ", timedelta(seconds=120)),
    ],
)
def test_hostile_retry_after_values_are_ignored_or_clamped_to_the_window(
    value: str, expected: timedelta | None
) -> None:
    assert parse_retry_after(503, value, now=T0, limit=WINDOW) == expected


@given(value=st.text(max_size=200), failures=st.integers(min_value=1, max_value=20))
def test_no_retry_after_value_can_break_the_schedule(value: str, failures: int) -> None:
    retry_after = parse_retry_after(429, value, now=T0, limit=WINDOW)
    assert retry_after is None or timedelta(0) <= retry_after <= WINDOW
    decision = decide_retry(
        default_policy(jitter=0.1),
        failures=failures,
        first_attempt_at=T0,
        now=T0 + timedelta(hours=1),
        retry_after=retry_after,
    )
    assert decision.gives_up or T0 < decision.next_attempt_at <= T0 + WINDOW  # type: ignore[operator]
