"""Dispatcher heartbeats: which dispatchers are alive, for `webhooks doctor`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # One row per dispatcher process, upserted by `webhooks.heartbeats.beat` from its loop.
    # `seen_at` is the last beat; a row that stops moving is a dispatcher that died or hung.
    op.execute(f"""
    CREATE TABLE "{s}".dispatchers (
        id         text PRIMARY KEY,
        hostname   text NOT NULL,
        pid        integer NOT NULL,
        started_at timestamptz NOT NULL,
        seen_at    timestamptz NOT NULL
    )""")
    op.execute(f'CREATE INDEX dispatchers_seen ON "{s}".dispatchers (seen_at)')
    # Every beat updates a row: tiny table, many dead tuples; vacuum by count, not by share.
    op.execute(
        f'ALTER TABLE "{s}".dispatchers SET (autovacuum_vacuum_scale_factor = 0, '
        "autovacuum_vacuum_threshold = 200)"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP TABLE IF EXISTS "{s}".dispatchers')
