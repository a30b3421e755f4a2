"""The sandbox: simulated test-mode events, and a clock a developer can fast-forward.

`trigger_event` publishes a test event through the real pipeline (outbox, dispatcher,
worker, signed POST, stored attempts). `advance` moves one project's test-mode deliveries
forward in time, so the whole retry schedule, exhaustion after 72 h and auto-disable after
days can be watched in seconds, with real attempts. Neither ever touches a live row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection

from webhooks import clock
from webhooks.database import sql
from webhooks.endpoints import get_endpoint
from webhooks.errors import InvalidArgument
from webhooks.modes import TEST
from webhooks.outbox import PublishResult, notify_dispatchers, publish_event, validate_project_id
from webhooks.settings import Settings

# Every pending test delivery of the project becomes due `by` sooner, but never earlier than
# now: in real time, an attempt would have been made when it fell due, and the schedule goes
# on from that attempt. The start of its retry window moves by the same amount, so the window
# is measured on the same shifted clock, and `advance 72h` in a loop walks a failing delivery
# through its whole schedule, one real attempt per step. Its endpoint's failing-since time
# and breaker move by the most any of its deliveries moved: auto-disable and the breaker's
# cooldown follow the shifted clock. Held rows (no due time) and rows in flight keep theirs.
ADVANCE = """
WITH skips AS (
    SELECT id, least(CAST(:by AS interval), next_attempt_at - :now) AS skip
    FROM {s}.deliveries
    WHERE project_id = :project_id AND mode = 'test' AND state = 'pending'
      AND next_attempt_at > :now
), moved AS (
    UPDATE {s}.deliveries d
    SET next_attempt_at = d.next_attempt_at - s.skip,
        first_attempt_at = d.first_attempt_at - s.skip, updated_at = :now
    FROM skips s
    WHERE d.id = s.id AND d.state = 'pending' AND d.next_attempt_at IS NOT NULL
    RETURNING d.endpoint_id, s.skip
), endpoints AS (
    UPDATE {s}.endpoints e
    SET failing_since = e.failing_since - m.skip,
        breaker_open_until = e.breaker_open_until - m.skip
    FROM (SELECT endpoint_id, max(skip) AS skip FROM moved GROUP BY endpoint_id) m
    WHERE e.id = m.endpoint_id
      AND (e.failing_since IS NOT NULL OR e.breaker_open_until IS NOT NULL)
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM endpoints) AS endpoints
"""


@dataclass(frozen=True)
class Advanced:
    """What one `advance` moved."""

    deliveries: int
    endpoints: int


def trigger_event(
    conn: Connection,
    settings: Settings,
    *,
    project_id: str,
    event_type: str,
    data: dict[str, Any],
    endpoint_id: str | None = None,
) -> PublishResult:
    """Publish a simulated test-mode event to the project's test endpoints.

    Args:
        endpoint_id: send it to this test endpoint alone, whatever its filter says.

    Raises:
        InvalidArgument: the endpoint is live or of another project.
        EndpointNotFound: no such endpoint.
    """
    if endpoint_id is not None:
        endpoint = get_endpoint(conn, settings, endpoint_id)
        if endpoint.mode != TEST:
            raise InvalidArgument(
                f"endpoint {endpoint_id} is a live endpoint; simulated events go to test "
                f"endpoints only (add one with `webhooks endpoint add URL --project "
                f"{endpoint.project_id} --mode test`)"
            )
        if endpoint.project_id != project_id:
            raise InvalidArgument(
                f"endpoint {endpoint_id} belongs to project {endpoint.project_id}, not {project_id}"
            )
    return publish_event(
        conn,
        settings,
        project_id=project_id,
        type=event_type,
        data=data,
        mode=TEST,
        only_endpoint=endpoint_id,
    )


def advance(conn: Connection, settings: Settings, *, project_id: str, by: timedelta) -> Advanced:
    """Move the project's pending test deliveries up to ``by`` forward in time, each at most
    to now (live rows never)."""
    validate_project_id(project_id)
    if by <= timedelta(0):
        raise InvalidArgument("the sandbox can only be advanced by a positive duration, e.g. 1h")
    row = conn.execute(
        sql(ADVANCE, settings.db_schema),
        {"project_id": project_id, "by": by, "now": clock.now()},
    ).one()
    if row.moved:
        notify_dispatchers(conn, settings)
    return Advanced(deliveries=int(row.moved), endpoints=int(row.endpoints))
