"""Endpoint health: when an endpoint started exhausting deliveries, for auto-disable.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # Set when a delivery to the endpoint is exhausted and nothing has succeeded since;
    # cleared by any success. Exhausting for longer than WEBHOOKS_DISABLE_AFTER disables it.
    op.execute(f'ALTER TABLE "{s}".endpoints ADD COLUMN failing_since timestamptz')


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'ALTER TABLE "{s}".endpoints DROP COLUMN failing_since')
