"""Endpoint isolation: in-flight counts per endpoint and a circuit breaker.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # Attempts that ended without any HTTP response (timeout, connect, dns, tls) in a row;
    # at WEBHOOKS_BREAKER_THRESHOLD the breaker opens until breaker_open_until.
    op.execute(
        f'ALTER TABLE "{s}".endpoints '
        "ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0, "
        "ADD COLUMN breaker_open_until timestamptz"
    )
    # The dispatcher counts each endpoint's attempts in flight at every claim.
    op.execute(
        f'CREATE INDEX deliveries_in_flight ON "{s}".deliveries (endpoint_id) '
        "WHERE state = 'delivering'"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".deliveries_in_flight')
    op.execute(
        f'ALTER TABLE "{s}".endpoints DROP COLUMN consecutive_failures, '
        "DROP COLUMN breaker_open_until"
    )
