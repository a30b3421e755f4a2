"""Endpoint lifecycle: endpoints can be described and (softly) deleted, and a delivery whose
endpoint was deleted is `cancelled`; deliveries can be listed per project, newest first.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-09
"""

from alembic import context, op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None

STATES = "'pending', 'delivering', 'succeeded', 'failed'"


def upgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'ALTER TABLE "{s}".endpoints ADD COLUMN IF NOT EXISTS description text')
    # Deleting is soft: the row keeps its id (never reused) so its attempts stay explainable.
    op.execute(f'ALTER TABLE "{s}".endpoints ADD COLUMN IF NOT EXISTS deleted_at timestamptz')
    op.execute(f'ALTER TABLE "{s}".deliveries DROP CONSTRAINT IF EXISTS deliveries_state_check')
    op.execute(
        f'ALTER TABLE "{s}".deliveries ADD CONSTRAINT deliveries_state_check '
        f"CHECK (state IN ({STATES}, 'cancelled'))"
    )
    # `webhooks deliveries --project P`: newest first, read backwards from the newest entry,
    # so a listing costs its LIMIT however long the project's history is.
    op.execute(
        f'CREATE INDEX IF NOT EXISTS deliveries_project_created ON "{s}".deliveries '
        "(project_id, created_at, id)"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".deliveries_project_created')
    # Before this revision there was no word for it: a cancelled delivery is finished and
    # will not be retried, which the older code reads as `failed`.
    op.execute(f"UPDATE \"{s}\".deliveries SET state = 'failed' WHERE state = 'cancelled'")
    op.execute(f'ALTER TABLE "{s}".deliveries DROP CONSTRAINT IF EXISTS deliveries_state_check')
    op.execute(
        f'ALTER TABLE "{s}".deliveries ADD CONSTRAINT deliveries_state_check '
        f"CHECK (state IN ({STATES}))"
    )
    op.execute(f'ALTER TABLE "{s}".endpoints DROP COLUMN deleted_at, DROP COLUMN description')
