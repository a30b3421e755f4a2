"""Endpoints, events and deliveries in the database, as the tests make and read them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from tests.support.polling import wait_for
from webhooks import clock
from webhooks.claiming import claim_due
from webhooks.database import sql
from webhooks.endpoints import add_endpoint
from webhooks.expansion import Expanded, Expander, expand_events
from webhooks.history import get_deliveries, list_attempts
from webhooks.messages import Claim
from webhooks.models import Attempt, Delivery
from webhooks.outbox import publish
from webhooks.settings import Settings


def new_endpoint(
    engine: Engine,
    settings: Settings,
    url: str,
    project: str,
    events: tuple[str, ...] = (),
    *,
    mode: str = "live",
) -> tuple[str, str]:
    """Create an endpoint; return (id, secret)."""
    with engine.begin() as conn:
        endpoint, secret = add_endpoint(
            conn, settings, url=url, project_id=project, event_types=events, mode=mode
        )
    return endpoint.id, secret


def publish_one(
    engine: Engine,
    settings: Settings,
    project: str,
    event_type: str = "deployment.succeeded",
    data: dict[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    with engine.begin() as conn:
        return publish(
            conn,
            project_id=project,
            type=event_type,
            data=data if data is not None else {"deployment_id": "dep_1"},
            settings=settings,
            **kwargs,
        )


def publish_expanded(
    engine: Engine,
    settings: Settings,
    project: str,
    event_type: str = "deployment.succeeded",
    data: dict[str, Any] | None = None,
    **kwargs: Any,
) -> str:
    """`publish_one`, then the expansion a dispatcher would do right after the commit: for
    tests that run no dispatcher and read the event's deliveries."""
    event_id = publish_one(engine, settings, project, event_type, data, **kwargs)
    expand(engine, settings, event_id)
    return event_id


def deliveries(engine: Engine, settings: Settings, event_id: str) -> list[Delivery]:
    with engine.connect() as conn:
        return get_deliveries(conn, settings, event_id)


def attempts(engine: Engine, settings: Settings, event_id: str) -> list[Attempt]:
    with engine.connect() as conn:
        return list_attempts(conn, settings, event_id)


def wait_for_state(
    engine: Engine, settings: Settings, event_id: str, state: str, *, timeout: float = 20.0
) -> list[Delivery]:
    """Wait until every delivery of the event is in ``state``."""

    def settled() -> list[Delivery] | None:
        found = deliveries(engine, settings, event_id)
        return found if found and all(d.state == state for d in found) else None

    return wait_for(settled, timeout=timeout, what=f"{event_id} to be {state}")


def count_rows(engine: Engine, settings: Settings, table: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sql(f"SELECT count(*) FROM {{s}}.{table}", settings.db_schema)
            ).scalar_one()
        )


def claims_now(engine: Engine, settings: Settings, *event_ids: str) -> list[Claim]:
    """Claim what is due now, as a dispatcher's round does (expanding these events first);
    the claims of these events."""
    expand(engine, settings, *event_ids)
    with engine.begin() as conn:
        batch = claim_due(conn, settings, clock.now(), 100)
    return [c for c in batch.claims if c.event_id in event_ids]


def expand(engine: Engine, settings: Settings, *event_ids: str) -> Expanded:
    """Expand committed events into their deliveries, as a dispatcher's round does: for tests
    that publish with no dispatcher running, then read deliveries. With ids, those events
    (after a dispatcher that holds one commits); without, every event awaiting expansion."""
    if event_ids:
        with engine.begin() as conn:
            return expand_events(conn, settings, event_ids)
    return Expander(engine, settings).run(budget=float("inf"))


def claim_now(engine: Engine, settings: Settings, event_id: str) -> Claim:
    """Claim what is due now; the one claim of this event."""
    [claim] = claims_now(engine, settings, event_id)
    return claim


def execute_sql(engine: Engine, settings: Settings, statement: str, **params: Any) -> list[Any]:
    """Run one statement (``{s}`` is the schema) in its own transaction; its rows, if any."""
    with engine.begin() as conn:
        result = conn.execute(sql(statement, settings.db_schema), params)
        return list(result.all()) if result.returns_rows else []
