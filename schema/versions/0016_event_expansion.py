"""Expansion after commit: the event row is the whole outbox entry, and the dispatchers expand
it into its deliveries once it has committed (`webhooks.expansion`).

- ``events.expanded_at``: when the event's deliveries were written (in the transaction that
  sets it); NULL until then. `publish` writes NULL explicitly; the column's default is the
  time of the insert, so every event stored before this revision (whose publish wrote its
  deliveries itself) counts as expanded, and so does a row written by a hand-made INSERT or by
  an older API still publishing the old way during a rolling upgrade: neither is expanded
  a second time. The default is not volatile, so Postgres stores it once for the existing
  rows instead of rewriting the table.
- ``events.only_endpoint``: the one endpoint a simulated event goes to (``webhooks trigger
  --endpoint``, an endpoint's "send test event"), whatever its filter; NULL for a normal one.
- ``events_unexpanded (created_at) WHERE expanded_at IS NULL``: the dispatchers look for
  unexpanded events every round; the index holds only those (normally none or a handful), so
  the look costs the same with millions of events stored. Building it reads the whole table
  while writes wait; on a deployment with millions of events, build it by hand first::

      CREATE INDEX CONCURRENTLY IF NOT EXISTS events_unexpanded
          ON webhooks.events (created_at) WHERE expanded_at IS NULL;

Downgrading loses the deliveries of events not yet expanded: it refuses while there are any
(stop the API's publishing, let the dispatchers expand them, then downgrade).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-22
"""

from alembic import context, op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(
        f'ALTER TABLE "{s}".events '
        "ADD COLUMN IF NOT EXISTS expanded_at timestamptz DEFAULT now(), "
        "ADD COLUMN IF NOT EXISTS only_endpoint text"
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS events_unexpanded ON "{s}".events (created_at) '
        "WHERE expanded_at IS NULL"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f"""
    DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM "{s}".events WHERE expanded_at IS NULL) THEN
            RAISE EXCEPTION 'events await expansion: let the dispatchers expand them first';
        END IF;
    END $$""")
    op.execute(f'DROP INDEX IF EXISTS "{s}".events_unexpanded')
    op.execute(f'ALTER TABLE "{s}".events DROP COLUMN only_endpoint, DROP COLUMN expanded_at')
