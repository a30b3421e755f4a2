"""Per-endpoint isolation decisions: pure, no services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from webhooks.admission import (
    Candidate,
    IsolationPolicy,
    RateLimit,
    admit,
    batch_quota,
    take_turns,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = IsolationPolicy(concurrency=2, breaker_threshold=3)


def rows(
    endpoint: str, n: int, failures: int = 0, open_until: datetime | None = None
) -> list[Candidate]:
    return [Candidate(f"{endpoint}-{i}", endpoint, failures, open_until) for i in range(n)]


def test_healthy_endpoints_are_all_claimed_up_to_their_cap() -> None:
    decision = admit(rows("a", 2) + rows("b", 1), {}, POLICY, NOW)
    assert decision.claim == ("a-0", "a-1", "b-0")
    assert decision.defer == {}


def test_rows_of_a_healthy_endpoint_past_its_cap_stay_due_and_wait() -> None:
    decision = admit(rows("busy", 7) + rows("fast", 1), {"busy": 1}, POLICY, NOW)
    assert decision.claim == ("busy-0", "fast-0")
    assert decision.defer == {}
    assert decision.waiting == 6


def test_in_flight_attempts_across_workers_count_against_the_cap() -> None:
    decision = admit(rows("a", 3), {"a": 2}, POLICY, NOW)
    assert decision.claim == ()
    assert decision.waiting == 3


def test_open_breaker_holds_everything_until_it_closes() -> None:
    until = NOW + timedelta(seconds=30)
    decision = admit(rows("dead", 3, failures=3, open_until=until) + rows("ok", 1), {}, POLICY, NOW)
    assert decision.claim == ("ok-0",)
    assert decision.defer == {f"dead-{i}": until for i in range(3)}


def test_half_open_breaker_lets_one_probe_through() -> None:
    expired = NOW - timedelta(seconds=1)
    decision = admit(rows("dead", 3, failures=3, open_until=expired), {}, POLICY, NOW)
    assert decision.claim == ("dead-0",)
    assert decision.defer == {
        "dead-1": NOW + timedelta(seconds=1),
        "dead-2": NOW + timedelta(seconds=2),
    }
    assert (
        admit(rows("dead", 1, failures=4, open_until=expired), {"dead": 1}, POLICY, NOW).claim == ()
    )


def test_failures_below_the_threshold_do_not_limit_the_endpoint() -> None:
    assert admit(rows("flaky", 2, failures=2), {}, POLICY, NOW).claim == ("flaky-0", "flaky-1")


def test_rate_limit_hands_out_a_second_of_burst_then_defers_each_row_to_its_slot() -> None:
    rate = RateLimit(per_second=2, next_send_at=None)
    decision = admit(rows("limited", 5), {}, IsolationPolicy(10, 3), NOW, {"limited": rate})
    assert decision.claim == ("limited-0", "limited-1")
    assert decision.defer == {
        "limited-2": NOW + timedelta(seconds=0.5),
        "limited-3": NOW + timedelta(seconds=1.0),
        "limited-4": NOW + timedelta(seconds=1.5),
    }
    assert decision.next_send_at == {"limited": NOW + timedelta(seconds=0.5)}


def test_a_deferred_row_finds_its_slot_free_when_it_comes_back() -> None:
    rate = RateLimit(per_second=2, next_send_at=NOW + timedelta(seconds=0.5))
    later = NOW + timedelta(seconds=0.5)
    decision = admit(rows("limited", 1), {}, IsolationPolicy(10, 3), later, {"limited": rate})
    assert decision.claim == ("limited-0",)
    assert decision.next_send_at == {"limited": later + timedelta(seconds=0.5)}


def test_a_busy_rate_limited_endpoint_gets_no_burst() -> None:
    rate = RateLimit(per_second=10, next_send_at=NOW + timedelta(seconds=3))
    decision = admit(rows("limited", 2), {}, IsolationPolicy(10, 3), NOW, {"limited": rate})
    assert decision.claim == ()
    assert decision.defer == {
        "limited-0": NOW + timedelta(seconds=3),
        "limited-1": NOW + timedelta(seconds=3.1),
    }


def test_a_deferral_past_the_retry_window_expires_the_delivery_instead() -> None:
    until = NOW + timedelta(hours=2)
    ends_soon = Candidate("late", "dead", 3, until, window_end=NOW + timedelta(minutes=5))
    ends_later = Candidate("early", "dead", 3, until, window_end=NOW + timedelta(hours=3))
    never_attempted = Candidate("new", "dead", 3, until, window_end=None)

    decision = admit([ends_soon, ends_later, never_attempted], {}, POLICY, NOW)

    assert decision.expire == ("late",)
    assert decision.defer == {"early": until, "new": until}


def test_a_rate_limit_slot_past_the_window_expires_the_delivery() -> None:
    rate = RateLimit(per_second=1, next_send_at=NOW + timedelta(seconds=10))
    row = Candidate("slow", "limited", 0, None, window_end=NOW + timedelta(seconds=5))

    decision = admit([row], {}, POLICY, NOW, rates={"limited": rate})

    assert decision.expire == ("slow",)
    assert decision.defer == {}
    assert decision.claim == ()


# -- replays and scheduled work take turns -----------------------------------------------------


def replays(endpoint: str, n: int, start: int = 0) -> list[Candidate]:
    return [Candidate(f"{endpoint}-r{i}", endpoint, 0, None, replay_id=start + i) for i in range(n)]


def test_a_class_gets_at_most_half_a_batch_while_the_other_has_work_left() -> None:
    assert batch_quota(10, scheduled=50, replays=300) == {"scheduled": 5, "replay": 5}
    # What one kind leaves unused goes to the other: a batch is never held back for nothing.
    assert batch_quota(10, scheduled=2, replays=300) == {"scheduled": 5, "replay": 8}
    assert batch_quota(10, scheduled=40, replays=0) == {"scheduled": 10, "replay": 5}


def test_replays_and_scheduled_rows_alternate_at_each_endpoint() -> None:
    ordered = take_turns(rows("a", 2), replays("a", 3))
    assert [c.key for c in ordered] == ["a-0", "replay:0", "a-1", "replay:1", "replay:2"]
    # The kind that did not go last at an endpoint starts there.
    ordered = take_turns(rows("a", 2), replays("a", 1), {"a": "scheduled"})
    assert [c.key for c in ordered][:2] == ["replay:0", "a-0"]


def test_a_bulk_replay_cannot_take_a_batch_or_an_endpoints_slots_from_scheduled_work() -> None:
    scheduled = rows("slow", 3) + rows("ok", 2) + rows("ok2", 2)
    queued = replays("slow", 100) + replays("more", 2, start=100) + replays("most", 2, start=200)
    quota = batch_quota(10, len(scheduled), len(queued))
    decision = admit(take_turns(scheduled, queued), {}, POLICY, NOW, quota=quota)
    claimed = decision.claim
    assert sum(k.startswith("replay:") for k in claimed) == 5
    assert {"ok-0", "ok-1", "ok2-0", "ok2-1"} <= set(claimed)
    # The slow endpoint's two slots: one scheduled row, one replay.
    assert {"slow-0", "replay:0"} <= set(claimed)
    assert not {"slow-1", "replay:1"} & set(claimed)


def test_replays_count_against_the_cap_and_wait_like_scheduled_rows() -> None:
    decision = admit(replays("a", 3), {"a": 1}, POLICY, NOW)
    assert decision.claim == ("replay:0",)
    assert decision.waiting == 2
