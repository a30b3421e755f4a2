"""A claiming round holds its endpoints' claim locks until it commits, whether it took them
with the due rows (a round without replays) or in a statement of their own (with replays):
the per-endpoint cap across dispatchers rests on it (tests/faults/test_dispatchers.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint, publish_expanded
from tests.support.receivers import Receiver
from webhooks import clock
from webhooks.claiming import claim_due
from webhooks.settings import Settings

TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended(:key, 0))"


@pytest.fixture(autouse=True)
def _no_other_due_rows(no_other_due_rows: None) -> None:
    """claim_due takes the oldest due rows of the whole schema: start each test without any."""


def lock_is_free(engine: Engine, key: str) -> bool:
    with engine.begin() as other:
        return bool(other.execute(sa.text(TRY_LOCK), {"key": key}).scalar_one())


@pytest.mark.parametrize("replays", [False, True])
def test_a_round_holds_its_endpoints_claim_locks_until_it_commits(
    engine: Engine, settings: Settings, receiver: Receiver, replays: bool
) -> None:
    project = f"proj_locks_{replays}"
    endpoint, _ = new_endpoint(engine, settings, receiver.url("/locks"), project)
    publish_expanded(engine, settings, project)
    key = f"{settings.db_schema}:{endpoint}"
    with engine.begin() as conn:
        batch = claim_due(conn, settings, clock.now(), 10, replays=replays)
        assert [c.endpoint_id for c in batch.claims] == [endpoint]
        assert not lock_is_free(engine, key)
    assert lock_is_free(engine, key)
