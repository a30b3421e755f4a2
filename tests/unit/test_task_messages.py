"""What a `webhooks.deliver` message carries: ids only, never a payload or a secret."""

from __future__ import annotations

from typing import Any

from webhooks.messages import Claim, Trigger, claims_from_kwargs, task_id
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
