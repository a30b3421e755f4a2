"""A history of attempts for the HTTP API's lists: many projects, a few of them large.

Used by `bench.api_bench` (1 M attempts) and by the test that EXPLAINs every list
(`tests/integration/test_api_plans.py`, enough rows that the planner would sort or scan if
an index were missing). Rows are inserted with ``generate_series``, as `bench.claim_time`
does, then the tables are vacuumed and analysed as autovacuum would.

Row ``g`` of deliveries (and of events: one delivery per event) belongs to one of
`BIG_PROJECTS` large projects 60 % of the time, else to one of ``small_projects`` others;
to one of `ROUTED_ENDPOINTS` endpoints of its project; every 11th delivery failed. Each
delivery has two attempts (both failed for a failed delivery, so about 9 % of attempts
failed). A large project also has `EXTRA_ENDPOINTS` endpoints without deliveries (its
endpoint list is long) and recoveries (one of them: `RECOVERIES`).
"""

from __future__ import annotations

import sqlalchemy as sa

BIG_PROJECTS = 3
ROUTED_ENDPOINTS = 7  # prime, so that g % 7 is independent of g % 10, g % 3, g % 11
EXTRA_ENDPOINTS = 300
RECOVERIES = 20_000
TYPES = ("deployment.succeeded", "deployment.failed", "build.finished", "domain.added", "alert")
CHUNK = 100_000

# The project of row g (integers only are formatted in: no value from outside).
_PROJECT = "CASE WHEN g % 10 < 6 THEN 'proj_big' || (g % {big}) ELSE 'proj_s' || (g % {small}) END"

ENDPOINTS = """
INSERT INTO {s}.endpoints (id, project_id, mode, url, secrets, created_at, updated_at)
SELECT p || '_ep' || e, p, 'live', 'https://example.com/' || p || '/' || e, '[]',
       now() - make_interval(days => 30, secs => e), now()
FROM (SELECT 'proj_big' || b AS p, {extra} AS n FROM generate_series(0, {big} - 1) b
      UNION ALL
      SELECT 'proj_s' || s, {routed} FROM generate_series(0, {small} - 1) s) projects,
     generate_series(0, projects.n - 1) e
"""
HISTORY = """
INSERT INTO {s}.events (id, project_id, mode, type, payload, created_at)
SELECT 'evt_h' || g, {project}, 'live', (CAST(:types AS text[]))[1 + g % 5],
       '{{"id":"evt_h' || g || '","type":"' || (CAST(:types AS text[]))[1 + g % 5]
       || '","data":{{"deployment_id":"dep_' || g || '"}}}}',
       now() - make_interval(secs => g)
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g;
INSERT INTO {s}.deliveries (id, event_id, endpoint_id, project_id, mode, state, attempt_count,
                            first_attempt_at, created_at, updated_at)
SELECT 'dlv_h' || g, 'evt_h' || g, {endpoint}, {project}, 'live',
       CASE WHEN g % 11 = 0 THEN 'failed' ELSE 'succeeded' END, 2,
       now() - make_interval(secs => g), now() - make_interval(secs => g), now()
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g;
INSERT INTO {s}.attempts (delivery_id, event_id, endpoint_id, project_id, mode, number,
                          trigger, started_at, duration_ms, request_url, request_headers,
                          response_status, response_headers, response_body, error_kind,
                          error_message)
SELECT 'dlv_h' || g, 'evt_h' || g, {endpoint}, {project}, 'live', n,
       CASE WHEN n = 1 THEN 'scheduled' ELSE 'replay' END,
       now() - make_interval(secs => g) + make_interval(secs => n), 12,
       'https://example.com/hooks', '{{"content-type": "application/json"}}',
       CASE WHEN g % 11 = 0 THEN 500 ELSE 200 END, '{{}}', 'ok',
       CASE WHEN g % 11 = 0 THEN 'http_status' END,
       CASE WHEN g % 11 = 0 THEN 'HTTP 500' END
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g, generate_series(1, 2) n
ORDER BY g DESC, n;
"""
RECOVERY_ROWS = """
INSERT INTO {s}.recoveries (id, project_id, mode, endpoint_id, since, until, state, total,
                            created_at, updated_at)
SELECT 'rcv_h' || r, 'proj_big' || (r % {big}), 'live',
       CASE WHEN r % 5 = 0 THEN NULL ELSE 'proj_big' || (r % {big}) || '_ep' || (r % {routed})
       END,
       now() - interval '30 days', now(), (ARRAY['running', 'done', 'cancelled'])[1 + r % 3], 0,
       now() - make_interval(secs => r), now()
FROM generate_series(1, {recoveries}) r
"""


def _sizes(small_projects: int) -> dict[str, int]:
    return {
        "big": BIG_PROJECTS,
        "small": small_projects,
        "routed": ROUTED_ENDPOINTS,
        "extra": EXTRA_ENDPOINTS,
        "recoveries": RECOVERIES,
    }


def add_projects(engine: sa.Engine, schema: str, small_projects: int) -> None:
    """The projects' endpoints and the large projects' recoveries."""
    sizes = _sizes(small_projects)
    with engine.begin() as conn:
        conn.execute(sa.text(ENDPOINTS.format(s=f'"{schema}"', **sizes)))
        conn.execute(sa.text(RECOVERY_ROWS.format(s=f'"{schema}"', **sizes)))


def add_history(
    engine: sa.Engine,
    schema: str,
    small_projects: int,
    lo: int,
    hi: int,
    *,
    one_project: bool = False,
) -> None:
    """Deliveries (and events) ``lo`` to ``hi``, two attempts each, then VACUUM ANALYZE.

    With ``one_project``, every row is ``proj_big0``'s (a small history whose pages of that
    project's filtered lists are as full as with a large one). Attempts are inserted newest
    row first, so that ids grow with time as they do live."""
    sizes = _sizes(small_projects)
    project = "'proj_big0'" if one_project else _PROJECT.format(**sizes)
    statement = HISTORY.format(
        s=f'"{schema}"',
        project=project,
        endpoint=f"({project}) || '_ep' || (g % {ROUTED_ENDPOINTS})",
    )
    # Newest rows are the lowest g: insert the oldest chunk first, for ids in time order.
    starts = list(range(lo, hi + 1, CHUNK))
    for start in reversed(starts):
        end = min(hi, start + CHUNK - 1)
        with engine.begin() as conn:
            for part in statement.split(";"):
                if part.strip():
                    conn.execute(sa.text(part), {"lo": start, "hi": end, "types": list(TYPES)})
    analyse(engine, schema)


def analyse(engine: sa.Engine, schema: str) -> None:
    """VACUUM ANALYZE the listed tables, as autovacuum would after a bulk load."""
    tables = ", ".join(
        f'"{schema}".{t}' for t in ("endpoints", "events", "deliveries", "attempts", "recoveries")
    )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text(f"VACUUM ANALYZE {tables}")
        )
