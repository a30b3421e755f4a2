"""Every filter of the HTTP API's lists reads an index in the list's order.

A list page is a keyset walk, newest first, that stops after LIMIT rows; with a filter whose
column is not in the walked index, the walk skips every row of the project that does not
match, and a page of a rare value (an endpoint's failed attempts) costs the whole history.
These indexes put each filter the API offers in front of the order (`webhooks.pages` says
which list reads which):

- events: ``events_project_type_created (project_id, mode, type, created_at, id)``, and
  ``events_created_id (created_at, id)`` (replaces ``events_created (created_at)``: a walk of
  all events in time order, which the planner may prefer for a very large project and
  `webhooks prune` reads in the same (created_at, id) order, then needs no sort);
- deliveries: ``deliveries_project_state_created (project_id, mode, state, created_at, id)``,
  ``deliveries_endpoint_created (endpoint_id, created_at, id)`` (replaces
  ``deliveries_endpoint (endpoint_id, created_at)``: the id breaks ties in the page order),
  ``deliveries_endpoint_state_created (endpoint_id, state, created_at, id)``,
  ``deliveries_event_created (event_id, created_at, id)``; ``deliveries_project
  (project_id, mode)`` goes: ``deliveries_project_mode_created`` starts with the same columns;
- attempts: ``attempts_project_mode_endpoint (project_id, mode, endpoint_id, id)``,
  ``attempts_event_id (event_id, id)`` (replaces ``attempts_event (event_id)``),
  ``attempts_delivery_id (delivery_id, id)``, and two partial indexes of failed attempts only,
  ``attempts_failed (project_id, mode, id)`` and ``attempts_endpoint_failed (project_id, mode,
  endpoint_id, id)``: small while most attempts succeed, and ``status=failed`` (what a
  dashboard asks for) reads nothing else. Their predicate is written exactly as
  `webhooks.pages.SUCCEEDED` so the planner can prove a query needs only them;
- recoveries: ``recoveries_endpoint_created (endpoint_id, created_at, id)`` (deleting an
  endpoint, which deletes its recoveries, finds them with it too).

An endpoint belongs to one project and mode, but the planner, unless told, takes the three
conditions of a list of one endpoint's rows as independent and expects a few rows where there
are all of the endpoint's: it would then sort them all rather than walk the index. The
statistics ``attempts_endpoint_scope`` and ``deliveries_endpoint_scope`` (functional
dependencies, gathered by ANALYZE) tell it.

Attempts are only inserted, so an index costs each attempt one more index entry; deliveries
are updated in place, and their state change already rewrites every index entry (their partial
indexes name the state), so one more index is one more entry per change.

On a deployment that already holds millions of rows, build the indexes by hand first, without
blocking writers, and this migration then finds them in place (and drops the replaced ones)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS events_project_type_created
        ON webhooks.events (project_id, mode, type, created_at, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS events_created_id ON webhooks.events (created_at, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_project_state_created
        ON webhooks.deliveries (project_id, mode, state, created_at, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_endpoint_created
        ON webhooks.deliveries (endpoint_id, created_at, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_endpoint_state_created
        ON webhooks.deliveries (endpoint_id, state, created_at, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_event_created
        ON webhooks.deliveries (event_id, created_at, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_project_mode_endpoint
        ON webhooks.attempts (project_id, mode, endpoint_id, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_event_id ON webhooks.attempts (event_id, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_delivery_id
        ON webhooks.attempts (delivery_id, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_failed
        ON webhooks.attempts (project_id, mode, id)
        WHERE NOT coalesce(error_kind IS NULL AND response_status BETWEEN 200 AND 299, false);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_endpoint_failed
        ON webhooks.attempts (project_id, mode, endpoint_id, id)
        WHERE NOT coalesce(error_kind IS NULL AND response_status BETWEEN 200 AND 299, false);
    CREATE STATISTICS IF NOT EXISTS webhooks.attempts_endpoint_scope (dependencies)
        ON endpoint_id, project_id, mode FROM webhooks.attempts;
    CREATE STATISTICS IF NOT EXISTS webhooks.deliveries_endpoint_scope (dependencies)
        ON endpoint_id, project_id, mode FROM webhooks.deliveries;
    ANALYZE webhooks.attempts, webhooks.deliveries;
    CREATE INDEX CONCURRENTLY IF NOT EXISTS recoveries_endpoint_created
        ON webhooks.recoveries (endpoint_id, created_at, id);
    DROP INDEX CONCURRENTLY IF EXISTS webhooks.deliveries_endpoint;
    DROP INDEX CONCURRENTLY IF EXISTS webhooks.deliveries_project;
    DROP INDEX CONCURRENTLY IF EXISTS webhooks.attempts_event;
    DROP INDEX CONCURRENTLY IF EXISTS webhooks.events_created;

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-21
"""

from alembic import context, op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

FAILED = "NOT coalesce(error_kind IS NULL AND response_status BETWEEN 200 AND 299, false)"
INDEXES = (
    ("events_project_type_created", "events", "(project_id, mode, type, created_at, id)", ""),
    ("events_created_id", "events", "(created_at, id)", ""),
    (
        "deliveries_project_state_created",
        "deliveries",
        "(project_id, mode, state, created_at, id)",
        "",
    ),
    ("deliveries_endpoint_created", "deliveries", "(endpoint_id, created_at, id)", ""),
    ("deliveries_endpoint_state_created", "deliveries", "(endpoint_id, state, created_at, id)", ""),
    ("deliveries_event_created", "deliveries", "(event_id, created_at, id)", ""),
    ("attempts_project_mode_endpoint", "attempts", "(project_id, mode, endpoint_id, id)", ""),
    ("attempts_event_id", "attempts", "(event_id, id)", ""),
    ("attempts_delivery_id", "attempts", "(delivery_id, id)", ""),
    ("attempts_failed", "attempts", "(project_id, mode, id)", FAILED),
    ("attempts_endpoint_failed", "attempts", "(project_id, mode, endpoint_id, id)", FAILED),
    ("recoveries_endpoint_created", "recoveries", "(endpoint_id, created_at, id)", ""),
)
# What the new ones replace, to put back on a downgrade.
REPLACED = (
    ("deliveries_endpoint", "deliveries", "(endpoint_id, created_at)"),
    ("deliveries_project", "deliveries", "(project_id, mode)"),
    ("attempts_event", "attempts", "(event_id)"),
    ("events_created", "events", "(created_at)"),
)

STATISTICS = ("attempts", "deliveries", "recoveries")


def upgrade() -> None:
    s = context.config.attributes["schema"]
    for name, table, columns, failed in INDEXES:
        where = f" WHERE {failed}" if failed else ""
        op.execute(f'CREATE INDEX IF NOT EXISTS {name} ON "{s}".{table} {columns}{where}')
    for name, _, _ in REPLACED:
        op.execute(f'DROP INDEX IF EXISTS "{s}".{name}')
    for table in STATISTICS:
        op.execute(
            f'CREATE STATISTICS IF NOT EXISTS "{s}".{table}_endpoint_scope (dependencies) '
            f'ON endpoint_id, project_id, mode FROM "{s}".{table}'
        )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    for table in STATISTICS:
        op.execute(f'DROP STATISTICS IF EXISTS "{s}".{table}_endpoint_scope')
    for name, table, columns in REPLACED:
        op.execute(f'CREATE INDEX IF NOT EXISTS {name} ON "{s}".{table} {columns}')
    for name, _, _, _ in INDEXES:
        op.execute(f'DROP INDEX IF EXISTS "{s}".{name}')
