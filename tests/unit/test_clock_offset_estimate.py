"""The clock-offset estimate: the midpoint of two local readings against the database's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from webhooks.clock_offset import MAX_CLOCK_OFFSET, ClockOffset, estimate_offset

T = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def test_the_database_time_is_compared_with_the_middle_of_the_round_trip() -> None:
    # Asked at T, answered at T + 200 ms; the database said T - 1.9 s. Its reading was taken
    # at about T + 100 ms of ours, so we are 2.0 s ahead, give or take 100 ms.
    measured = estimate_offset(T, T - timedelta(seconds=1.9), T + timedelta(milliseconds=200))
    assert measured == ClockOffset(timedelta(seconds=2), timedelta(milliseconds=100))
    assert not measured.is_within()
    assert "2.000s ahead of the database's" in measured.describe()


def test_a_slow_round_trip_alone_is_not_an_offset() -> None:
    # A 1.6 s round trip with the database reading in its middle: clocks agree.
    measured = estimate_offset(T, T + timedelta(seconds=0.8), T + timedelta(seconds=1.6))
    assert measured.offset == timedelta(0) and measured.is_within()


def test_the_limit_is_one_second_either_way() -> None:
    assert timedelta(seconds=1) == MAX_CLOCK_OFFSET
    exactly = ClockOffset(-MAX_CLOCK_OFFSET, timedelta(0))
    assert exactly.is_within() and "behind" in exactly.describe()
    assert not ClockOffset(-MAX_CLOCK_OFFSET - timedelta(milliseconds=1), timedelta(0)).is_within()
