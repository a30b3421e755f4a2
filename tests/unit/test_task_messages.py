"""What a `webhooks.deliver` message carries: ids only, never a payload or a secret."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from webhooks.messages import Claim, Trigger, claims_from_kwargs, group_claims, task_id
from webhooks.settings import Settings
from workers.app import celery_config
from workers.dispatcher import send_claims

CLAIM = Claim(
    delivery_id="dlv_0123456789abcdef",
    event_id="evt_01abc",
    endpoint_id="ep_01def",
    attempt=3,
    claim_token="6f1c3a2e-0000-4000-8000-000000000000",
    trigger=Trigger.SCHEDULED,
)


class RecordingApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def test_message_names_the_delivery_event_endpoint_and_attempt_and_nothing_else() -> None:
    app = RecordingApp()
    send_claims(app, Settings.from_env({"WEBHOOKS_QUEUE": "hooks"}), [CLAIM], producer=None)  # type: ignore[arg-type]
    [(name, options)] = app.sent
    assert name == "webhooks.deliver"
    assert options["queue"] == "hooks"
    assert options["kwargs"] == {
        "delivery_id": "dlv_0123456789abcdef",
        "event_id": "evt_01abc",
        "endpoint_id": "ep_01def",
        "attempt": 3,
        "claim_token": "6f1c3a2e-0000-4000-8000-000000000000",
        "trigger": "scheduled",
    }
    assert "args" not in options and "countdown" not in options and "eta" not in options
    assert claims_from_kwargs(options["kwargs"]) == [CLAIM]


def test_a_batch_lists_each_attempt_by_its_ids_and_reads_back_the_same_claims() -> None:
    replay = Claim(
        **{
            **CLAIM.__dict__,
            "delivery_id": "dlv_fedcba9876543210",
            "attempt": 1,
            "trigger": Trigger.REPLAY,
        }
    )
    app = RecordingApp()
    send_claims(app, Settings.from_env({}), [CLAIM, replay], producer=None)  # type: ignore[arg-type]
    [(name, options)] = app.sent
    assert name == "webhooks.deliver"
    entries = options["kwargs"]["attempts"]
    assert [e["delivery_id"] for e in entries] == ["dlv_0123456789abcdef", "dlv_fedcba9876543210"]
    assert [e["trigger"] for e in entries] == ["scheduled", "replay"]
    # Flower searches the arguments' text: every delivery id of the batch is in it.
    assert "dlv_fedcba9876543210" in options["kwargsrepr"]
    assert claims_from_kwargs(options["kwargs"]) == [CLAIM, replay]
    assert options["task_id"] == "dlv_0123456789abcdef-a3-b2-6f1c3a2e"


def test_task_id_is_findable_by_delivery_id_in_flower() -> None:
    assert task_id([CLAIM]) == "dlv_0123456789abcdef-a3-6f1c3a2e"


def test_celery_is_configured_for_at_least_once_with_postgres_holding_the_schedule() -> None:
    settings = Settings.from_env({"WEBHOOKS_LEASE": "60s"})
    config = celery_config(settings)
    assert config["task_acks_late"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_reject_on_worker_lost"] is False
    assert config["broker_transport_options"]["visibility_timeout"] > 60
    assert config["worker_pool"] == "threads"
    assert config["worker_send_task_events"] is True


def claims(n: int) -> list[Claim]:
    return [
        Claim(**{**CLAIM.__dict__, "delivery_id": f"dlv_{i:04d}", "endpoint_id": f"ep_{i % 7}"})
        for i in range(n)
    ]


def test_claims_go_alone_while_the_workers_have_a_free_slot_for_each() -> None:
    assert group_claims(claims(5), in_flight=27, slots=32, most=50) == [[c] for c in claims(5)]


def test_past_the_free_slots_claims_are_spread_over_them_in_batches() -> None:
    groups = group_claims(claims(100), in_flight=24, slots=32, most=50)
    assert [len(g) for g in groups] == [13, 13, 13, 13, 12, 12, 12, 12]
    assert group_claims(claims(120), in_flight=40, slots=32, most=50) == [
        claims(120)[:40],
        claims(120)[40:80],
        claims(120)[80:],
    ]


@given(
    n=st.integers(0, 400),
    in_flight=st.integers(0, 200),
    slots=st.integers(1, 64),
    most=st.integers(1, 60),
    unsteady=st.sets(st.sampled_from([f"ep_{i}" for i in range(7)])),
)
def test_grouping_sends_every_claim_once_and_no_task_carries_more_than_the_most(
    n: int, in_flight: int, slots: int, most: int, unsteady: set[str]
) -> None:
    given_claims = claims(n)
    groups = group_claims(
        given_claims,
        in_flight=in_flight,
        slots=slots,
        most=most,
        alone=lambda c: c.endpoint_id in unsteady,
    )
    sent = [c for g in groups for c in g]
    assert sorted(c.delivery_id for c in sent) == [c.delivery_id for c in given_claims]
    assert all(1 <= len(g) <= most for g in groups)
    # An endpoint that lately gave no response never shares a task.
    assert all(len(g) == 1 for g in groups if any(c.endpoint_id in unsteady for c in g))
    steady = [c for c in given_claims if c.endpoint_id not in unsteady]
    if len(steady) <= slots - in_flight - (n - len(steady)):
        assert all(len(g) == 1 for g in groups)
