"""Retention: indexes that let `webhooks prune` walk old rows in batches, and vacuum settings.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

On a deployment that already holds millions of attempts, build the two indexes by hand first,
without blocking writers, and this migration then finds them in place::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_started
        ON webhooks.attempts (started_at, id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS replays_delivery ON webhooks.replays (delivery_id);

The reasons for the storage parameters are in `webhooks.retention`'s docstring.
"""

from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # Prune walks attempts oldest first, in (started_at, id) keyset batches.
    op.execute(f'CREATE INDEX IF NOT EXISTS attempts_started ON "{s}".attempts (started_at, id)')
    # Deleting a delivery cascades to its replays: without this index every deleted delivery
    # would scan the whole replays table.
    op.execute(f'CREATE INDEX IF NOT EXISTS replays_delivery ON "{s}".replays (delivery_id)')
    # Append-only tables whose only dead rows come from prune: vacuum after 2 % of the rows
    # are dead (default 20 %), so a daily prune's space is reused the next day instead of the
    # table growing by a week of history; freeze and set the visibility map after 5 % new rows,
    # so anti-wraparound vacuums stay small.
    for table in ("attempts", "events"):
        op.execute(
            f'ALTER TABLE "{s}".{table} SET (autovacuum_vacuum_scale_factor = 0.02, '
            "autovacuum_vacuum_insert_scale_factor = 0.05, "
            "autovacuum_analyze_scale_factor = 0.02)"
        )
    # Replays move pending → delivering → done like deliveries do, and the dispatcher scans
    # their partial indexes: vacuum by count, as 0001 does for deliveries.
    op.execute(
        f'ALTER TABLE "{s}".replays SET (autovacuum_vacuum_scale_factor = 0, '
        "autovacuum_vacuum_threshold = 1000)"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    for table in ("attempts", "events", "replays"):
        op.execute(
            f'ALTER TABLE "{s}".{table} RESET (autovacuum_vacuum_scale_factor, '
            "autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor, "
            "autovacuum_vacuum_threshold)"
        )
    op.execute(f'DROP INDEX IF EXISTS "{s}".replays_delivery')
    op.execute(f'DROP INDEX IF EXISTS "{s}".attempts_started')
