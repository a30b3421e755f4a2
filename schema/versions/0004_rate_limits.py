"""Per-endpoint rate limits.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # rate_limit: requests per second, NULL for none. next_send_at: the earliest time the
    # next request may start; dispatchers allocate send slots from it under the row lock, so
    # the limit holds however many dispatchers and workers there are.
    op.execute(
        f'ALTER TABLE "{s}".endpoints ADD COLUMN rate_limit double precision '
        "CHECK (rate_limit > 0), ADD COLUMN next_send_at timestamptz"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'ALTER TABLE "{s}".endpoints DROP COLUMN rate_limit, DROP COLUMN next_send_at')
