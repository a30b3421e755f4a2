"""Recording guards: one attempt row per claim, reclaims counted, held rows findable.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # The claim an attempt was made under. A result written again after a commit whose
    # acknowledgement was lost finds its row here instead of storing the request twice.
    op.execute(f'ALTER TABLE "{s}".attempts ADD COLUMN IF NOT EXISTS claim_token uuid')
    op.execute(
        f'CREATE UNIQUE INDEX IF NOT EXISTS attempts_claim ON "{s}".attempts (claim_token) '
        "WHERE claim_token IS NOT NULL"
    )
    # How many times in a row the delivery's lease ran out with no attempt recorded: a
    # delivery that loops without a trace (a crash between claim and record) shows up here.
    op.execute(
        f'ALTER TABLE "{s}".deliveries ADD COLUMN IF NOT EXISTS reclaims integer NOT NULL DEFAULT 0'
    )
    # Held rows (pending, no due time: their endpoint was disabled when they were written).
    # The dispatcher releases those whose endpoint is enabled, including rows a publish wrote
    # after an enable had already released the others.
    op.execute(
        f'CREATE INDEX IF NOT EXISTS deliveries_held ON "{s}".deliveries (endpoint_id) '
        "WHERE state = 'pending' AND next_attempt_at IS NULL"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".deliveries_held')
    op.execute(f'ALTER TABLE "{s}".deliveries DROP COLUMN IF EXISTS reclaims')
    op.execute(f'DROP INDEX IF EXISTS "{s}".attempts_claim')
    op.execute(f'ALTER TABLE "{s}".attempts DROP COLUMN IF EXISTS claim_token')
