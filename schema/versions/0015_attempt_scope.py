"""Attempts carry their project and mode, so the HTTP API lists a project's attempts from an index.

Until now an attempt reached its project and mode only through its delivery, so listing one
project's attempts (newest first) walked every project's attempts and joined each to its
delivery: a page cost grew with the whole table. Copying the two values onto the attempt when
it is written (they never change) lets ``attempts_project_mode (project_id, mode, id)`` give a
page in its order, whatever the history holds.

On a deployment that already holds millions of attempts, the backfill rewrites every attempt
row once: run this migration in a quiet hour, or add the columns, backfill in batches and
build the index by hand first, without blocking writers::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_project_mode
        ON webhooks.attempts (project_id, mode, id);

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-20
"""

from alembic import context, op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'ALTER TABLE "{s}".attempts ADD COLUMN IF NOT EXISTS project_id text')
    op.execute(f'ALTER TABLE "{s}".attempts ADD COLUMN IF NOT EXISTS mode text')
    op.execute(f"""
    UPDATE "{s}".attempts a SET project_id = d.project_id, mode = d.mode
    FROM "{s}".deliveries d
    WHERE d.id = a.delivery_id AND (a.project_id IS NULL OR a.mode IS NULL)""")
    op.execute(f'ALTER TABLE "{s}".attempts ALTER COLUMN project_id SET NOT NULL')
    op.execute(f'ALTER TABLE "{s}".attempts ALTER COLUMN mode SET NOT NULL')
    op.execute(
        f'CREATE INDEX IF NOT EXISTS attempts_project_mode ON "{s}".attempts (project_id, mode, id)'
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".attempts_project_mode')
    op.execute(f'ALTER TABLE "{s}".attempts DROP COLUMN IF EXISTS mode')
    op.execute(f'ALTER TABLE "{s}".attempts DROP COLUMN IF EXISTS project_id')
