"""Which events retention may delete, and how a prune report reads (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from webhooks.retention import PruneReport, settled_events


def test_an_event_is_settled_only_when_every_delivery_is_finished_and_held() -> None:
    settled = settled_events(
        ["evt_done", "evt_live", "evt_replaying", "evt_none", "evt_busy"],
        delivery_counts={"evt_done": 2, "evt_live": 2, "evt_replaying": 1, "evt_busy": 1},
        # evt_live: one of two finished; evt_busy: finished but locked by someone else.
        finished_counts={"evt_done": 2, "evt_live": 1, "evt_replaying": 1},
        live_replays={"evt_replaying"},
    )
    assert settled == {"evt_done", "evt_none"}  # no deliveries at all: nothing to wait for


def test_a_report_summarises_counts_and_times() -> None:
    report = PruneReport(
        cutoff=datetime(2026, 10, 29, tzinfo=UTC),
        attempts=100_200,
        events=10_100,
        deliveries=10_100,
        replays=1_000,
        recoveries=3,
        batches=24,
        elapsed=timedelta(seconds=4.5),
        longest_batch=timedelta(milliseconds=393),
    )
    assert report.summary() == (
        "deleted 100200 attempts, 10100 events, 10100 deliveries, 1000 replays, 3 recoveries "
        "older than "
        "2026-10-29T00:00:00Z in 24 batches, 4.50s (longest batch 393 ms)"
    )
    assert report.as_dict()["cutoff"] == "2026-10-29T00:00:00Z"
    assert report.as_dict()["longest_batch_seconds"] == 0.393
