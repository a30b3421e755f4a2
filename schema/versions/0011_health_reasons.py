"""Endpoint health with reasons: failures in a row, the latest reason, and whether the first
exhausted delivery of a failing period has been announced.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # Attempts in a row that failed, of any kind (the breaker's consecutive_failures counts
    # only those with no response); at FAILING_AFTER the endpoint is `failing`.
    op.execute(
        f'ALTER TABLE "{s}".endpoints '
        "ADD COLUMN IF NOT EXISTS failures_in_row integer NOT NULL DEFAULT 0, "
        "ADD COLUMN IF NOT EXISTS failing_reason text, "
        "ADD COLUMN IF NOT EXISTS exhaustion_announced boolean NOT NULL DEFAULT false"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(
        f'ALTER TABLE "{s}".endpoints DROP COLUMN failures_in_row, DROP COLUMN failing_reason, '
        "DROP COLUMN exhaustion_announced"
    )
