"""Every list of the HTTP API (and the portal) reads an index in its own order and stops after
a page: EXPLAIN of each list's query, with each filter it offers, alone and combined, with and
without a cursor and a time window, over enough rows (analysed) that the planner would scan
the table or sort it if no index served.

A list's plan passes if no large table is read by a Seq Scan, the list's table is read by an
index scan of the index `webhooks.pages` names for those filters, and no Sort stands between
the page's LIMIT and that scan.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bench.api_history import add_history, add_projects
from webhooks import pages
from webhooks.api import create_app
from webhooks.pages import Position, Scope, Where, Window, page_statement
from webhooks.settings import Settings

pytestmark = pytest.mark.slow

DELIVERIES = 60_000  # 120 000 attempts
SMALL_PROJECTS = 97
BIG = Scope("proj_big0", "live")
LARGE_TABLES = {"attempts", "deliveries", "events", "endpoints", "recoveries"}
PAGE = 100
# A selection the planner expects to be about a page (an endpoint's few failed deliveries of
# one type) is rightly read whole and sorted; an endpoint's whole history never is.
SORTED_PAGES = 5


@pytest.fixture(scope="module")
def history(engine: Engine, settings: Settings) -> dict[str, Any]:
    """The history, and real values of the large project to filter on."""
    add_projects(engine, settings.db_schema, SMALL_PROJECTS)
    add_history(engine, settings.db_schema, SMALL_PROJECTS, 1, DELIVERIES)
    return values_to_filter_on(engine, settings)


def values_to_filter_on(engine: Engine, settings: Settings) -> dict[str, Any]:
    """An attempt of the large project, its delivery's position and a window around it."""
    with engine.connect() as conn:
        middle = conn.execute(
            sa.text(
                f'SELECT id, event_id, delivery_id, endpoint_id, started_at FROM "'
                f'{settings.db_schema}".attempts WHERE project_id = :p ORDER BY id '
                "OFFSET 20000 LIMIT 1"
            ),
            {"p": BIG.project_id},
        ).one()
        row = conn.execute(
            sa.text(f'SELECT created_at, id FROM "{settings.db_schema}".deliveries WHERE id = :d'),
            {"d": middle.delivery_id},
        ).one()
    return {
        "attempt": middle,
        "position": Position(created_at=row.created_at, id=row.id),
        # Most of the history: a window that leaves few rows may rightly be sorted.
        "window": Window(
            created_after=row.created_at - timedelta(days=365),
            created_before=row.created_at + timedelta(seconds=1),
        ),
    }


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scans_of(plan: dict[str, Any], table: str) -> Iterator[dict[str, Any]]:
    """The scans of ``table`` under ``plan`` that no LIMIT stands between."""
    if plan.get("Relation Name") == table:
        yield plan
    for child in plan.get("Plans", []):
        if child["Node Type"] != "Limit":
            yield from scans_of(child, table)


def problems(
    plan: dict[str, Any], table: str, page: int, indexes: set[str] | None = None
) -> list[str]:
    """What is wrong with the (analysed) plan of a page of ``table``: a Seq Scan of a large
    table; a Sort that had more than `SORTED_PAGES` pages of rows of ``table`` to sort (a page
    that costs its whole selection); with ``indexes``, ``table`` read by none of them."""
    found = [
        f"Seq Scan on {node['Relation Name']}"
        for node in nodes(plan)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in LARGE_TABLES
    ]
    for node in nodes(plan):
        if node["Node Type"] in ("Sort", "Incremental Sort") and any(
            True for _ in scans_of(node, table)
        ):
            rows = sum(c["Actual Rows"] * c["Actual Loops"] for c in node["Plans"])
            if rows > SORTED_PAGES * page:
                found.append(f"{node['Node Type']} of {rows} rows of {table}")
    used = {
        str(index.get("Index Name"))
        for node in nodes(plan)
        if node.get("Relation Name") == table
        for index in [node, *nodes(node)]  # a Bitmap Heap Scan's Bitmap Index Scans
        if "Index Name" in index
    }
    if indexes is not None and not used & indexes:
        found.append(f"{table} read by {sorted(used)}, not {sorted(indexes)}")
    return found


def plan(conn: Connection, settings: Settings, statement: str, params: dict[str, Any]) -> Any:
    """The plan Postgres makes for these values, run (the API plans every query with its
    values: `test_the_api_plans_each_query_with_its_values`)."""
    text = statement.replace("{s}", f'"{settings.db_schema}"')
    found = conn.execute(sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + text), params).scalar_one()
    return _json(found)[0]["Plan"]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def subsets(names: list[str]) -> Iterator[tuple[str, ...]]:
    for size in range(len(names) + 1):
        yield from itertools.combinations(names, size)


Case = tuple[str, str, str, Where, set[str]]


def cases(h: dict[str, Any]) -> Iterator[Case]:
    """(name, page query, table, conditions, expected indexes) of every combination."""
    a = h["attempt"]
    for after, window in itertools.product([None, h["position"]], [Window(), h["window"]]):
        tag = f"after={after is not None} window={window != Window()}"
        yield (
            f"endpoints {tag}",
            pages.ENDPOINT_PAGE,
            "endpoints",
            pages.endpoints_where(BIG, after, window),
            {"endpoints_project_mode_created"},
        )
        for chosen in subsets(["type"]):
            yield (
                f"events {chosen} {tag}",
                pages.EVENT_PAGE,
                "events",
                pages.events_where(BIG, after, window, "deployment.failed" if chosen else None),
                {"events_project_type_created" if chosen else "events_project_created"},
            )
        for chosen in subsets(["state", "endpoint_id", "event_id", "event_type"]):
            if "event_type" in chosen and "endpoint_id" not in chosen:
                continue  # only the portal filters on a type, on an endpoint's page
            values = {
                "state": "failed",
                "endpoint_id": a.endpoint_id,
                "event_id": a.event_id,
                "event_type": "deployment.failed",
            }
            yield (
                f"deliveries {chosen} {tag}",
                pages.DELIVERY_PAGE,
                "deliveries",
                pages.deliveries_where(BIG, after, window, **{k: values[k] for k in chosen}),
                set(_delivery_index(set(chosen)).split("|")),
            )
        for chosen in subsets(["endpoint_id", "state"]):
            values = {"endpoint_id": a.endpoint_id, "state": "done"}
            yield (
                f"recoveries {chosen} {tag}",
                pages.RECOVERY_PAGE,
                "recoveries",
                pages.recoveries_where(BIG, after, window, **{k: values[k] for k in chosen}),
                {
                    "recoveries_endpoint_created"
                    if "endpoint_id" in chosen
                    else "recoveries_project_created"
                },
            )
    attempt_after = Position(created_at=None, id=str(a.id))
    for after, window in itertools.product([None, attempt_after], [Window(), h["window"]]):
        tag = f"after={after is not None} window={window != Window()}"
        for chosen in subsets(["event_id", "delivery_id", "endpoint_id", "status"]):
            for status in ["succeeded", "failed"] if "status" in chosen else [None]:
                values = {
                    "event_id": a.event_id,
                    "delivery_id": a.delivery_id,
                    "endpoint_id": a.endpoint_id,
                    "status": status,
                }
                yield (
                    f"attempts {chosen} {status} {tag}",
                    pages.ATTEMPT_PAGE,
                    "attempts",
                    pages.attempts_where(BIG, after, window, **{k: values[k] for k in chosen}),
                    _attempt_indexes(set(chosen), status),
                )


def _delivery_index(chosen: set[str]) -> str:
    if "event_id" in chosen:
        return "deliveries_event_created"
    if "endpoint_id" in chosen and "state" in chosen:
        # With a type too (on the events joined), a few rows: either endpoint index will do.
        if "event_type" in chosen:
            return "deliveries_endpoint_state_created|deliveries_endpoint_created"
        return "deliveries_endpoint_state_created"
    if "endpoint_id" in chosen:
        return "deliveries_endpoint_created"
    if "state" in chosen:
        return "deliveries_project_state_created"
    # A project's deliveries of either mode (for the CLI) are in the same order.
    return "deliveries_project_mode_created|deliveries_project_created"


def _attempt_indexes(chosen: set[str], status: str | None) -> set[str]:
    if chosen & {"event_id", "delivery_id"}:
        return {f"attempts_{k}" for k in chosen & {"event_id", "delivery_id"}}
    failed = status == "failed"
    if "endpoint_id" in chosen:
        return {"attempts_endpoint_failed" if failed else "attempts_project_mode_endpoint"}
    return {"attempts_failed" if failed else "attempts_project_mode"}


def check_every_list(
    engine: Engine, settings: Settings, history: dict[str, Any], *, on_ssd: bool = False
) -> dict[str, list[str]]:
    """Every combination's problems (none: each reads a page, not its whole selection)."""
    failures: dict[str, list[str]] = {}
    with engine.begin() as conn:
        if on_ssd:
            conn.execute(sa.text("SET LOCAL random_page_cost = 1.1"))
        for name, query, table, where, indexes in cases(history):
            statement, params = page_statement(query, where, PAGE)
            params.setdefault("now", history["position"].created_at)
            analysed = plan(conn, settings, statement, params)
            found = problems(analysed, table, PAGE, indexes if on_ssd else None)
            if found:
                failures[name] = found
    return failures


def test_every_list_with_every_filter_reads_a_page_not_its_whole_selection(
    engine: Engine, settings: Settings, history: dict[str, Any]
) -> None:
    """With Postgres's default costs the planner may walk a time-ordered index (the primary
    key, ``events_created_id``) for a very large project, whose rows are a good share of any
    stretch of it: also a walk in the page's order that stops after a page."""
    failures = check_every_list(engine, settings, history)
    assert failures == {}, json.dumps(failures, indent=1)


def test_each_filter_reads_the_index_made_for_it(
    engine: Engine, settings: Settings, history: dict[str, Any]
) -> None:
    """With random reads costed as on an SSD (``random_page_cost = 1.1``), each combination
    reads the index `webhooks.pages` names for it."""
    failures = check_every_list(engine, settings, history, on_ssd=True)
    assert failures == {}, json.dumps(failures, indent=1)


def test_without_its_index_a_filtered_list_would_sort_or_read_another(
    engine: Engine, settings: Settings, history: dict[str, Any]
) -> None:
    """The check can fail: without the index of an endpoint's attempts (dropped in a
    transaction that is rolled back) the endpoint's list reads something else."""
    where = pages.attempts_where(BIG, endpoint_id=history["attempt"].endpoint_id)
    statement, params = page_statement(pages.ATTEMPT_PAGE, where, PAGE)
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(sa.text("SET LOCAL random_page_cost = 1.1"))
        conn.execute(sa.text(f'DROP INDEX "{settings.db_schema}".attempts_project_mode_endpoint'))
        without = plan(conn, settings, statement, params)
        tx.rollback()
    assert problems(without, "attempts", PAGE, {"attempts_project_mode_endpoint"})


def test_a_recovery_page_is_one_statement(
    engine: Engine, settings: Settings, history: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as conn:
            page = pages.list_recoveries_page(
                conn, settings, BIG, history["position"].created_at, limit=100
            )
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(page.items) == 100 and page.has_more
    assert [r.created_at for r in page.items] == sorted(
        (r.created_at for r in page.items), reverse=True
    )
    assert len(statements) == 1


def test_the_api_plans_each_query_with_its_values(
    settings: Settings, history: dict[str, Any]
) -> None:
    """psycopg prepares a statement run five times, and Postgres may then plan it once for
    any values, from averages: the API's engine must not prepare (see `create_engine`)."""
    app = create_app(settings)
    engine: Engine = app.state.webhooks.engine
    try:
        with engine.connect() as conn:
            for _ in range(10):
                pages.list_attempts_page(
                    conn, settings, BIG, limit=PAGE, endpoint_id=history["attempt"].endpoint_id
                )
            prepared = conn.execute(sa.text("SELECT count(*) FROM pg_prepared_statements"))
            assert prepared.scalar_one() == 0
    finally:
        engine.dispose()
