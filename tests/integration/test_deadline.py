"""The 10 s total deadline, through the whole pipeline, at its real default value."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from tests.support.deliveries import attempts, new_endpoint, publish_one
from tests.support.polling import wait_for
from tests.support.receivers import Receiver
from webhooks.settings import Settings

pytestmark = [pytest.mark.usefixtures("stack"), pytest.mark.slow]

# The default WEBHOOKS_TIMEOUT (10s) applies; only the lease is pinned above it.
STACK_ENV = {"WEBHOOKS_LEASE": "30s"}


def test_silent_and_trickling_receivers_are_cut_at_ten_seconds(
    engine: Engine, settings: Settings, receiver: Receiver, project: str
) -> None:
    assert settings.timeout.total_seconds() == 10
    new_endpoint(engine, settings, receiver.url("/hang"), project, ("silent.event",))
    new_endpoint(engine, settings, receiver.url("/trickle"), project, ("slow.event",))
    silent = publish_one(engine, settings, project, "silent.event")
    trickle = publish_one(engine, settings, project, "slow.event")

    for event_id in (silent, trickle):
        wait_for(
            lambda e=event_id: attempts(engine, settings, e),
            timeout=25,
            what="the first attempt to be recorded",
        )
    [hung] = attempts(engine, settings, silent)[:1]
    [slow] = attempts(engine, settings, trickle)[:1]

    assert hung.error_kind == "timeout" and hung.response_status is None
    assert 10_000 <= hung.duration_ms <= 10_600, hung.duration_ms
    # The trickle sent a 200 header and then a byte every half second: the status is kept,
    # the attempt is a failure because the body did not finish within the deadline.
    assert slow.error_kind == "timeout" and slow.response_status == 200
    assert 10_000 <= slow.duration_ms <= 10_600, slow.duration_ms
    assert len(receiver.received("/trickle")) == 1
