"""Live and test modes: every endpoint, event and delivery has one, and a delivery can only
join an event and an endpoint of its own project and mode.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

MODE = "text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test'))"


def upgrade() -> None:
    s = context.config.attributes["schema"]
    # Every existing row is live: events stored before keep their exact bytes (no "mode").
    for table in ("endpoints", "events"):
        op.execute(f'ALTER TABLE "{s}".{table} ADD COLUMN IF NOT EXISTS mode {MODE}')
        op.execute(
            f'ALTER TABLE "{s}".{table} ADD CONSTRAINT {table}_scope UNIQUE (id, project_id, mode)'
        )
    op.execute(f'ALTER TABLE "{s}".deliveries ADD COLUMN IF NOT EXISTS mode {MODE}')
    op.execute(f'ALTER TABLE "{s}".deliveries ADD COLUMN IF NOT EXISTS project_id text')
    op.execute(
        f'UPDATE "{s}".deliveries d SET project_id = ev.project_id '
        f'FROM "{s}".events ev WHERE ev.id = d.event_id'
    )
    op.execute(f'ALTER TABLE "{s}".deliveries ALTER COLUMN project_id SET NOT NULL')
    # The delivery's project and mode must be its event's and its endpoint's: enforced by the
    # foreign keys themselves, so no code path (fan-out, replay, recovery, a hand-written
    # INSERT) can cross modes or projects. They replace the plain id references.
    op.execute(
        f'ALTER TABLE "{s}".deliveries DROP CONSTRAINT IF EXISTS deliveries_event_id_fkey, '
        "DROP CONSTRAINT IF EXISTS deliveries_endpoint_id_fkey"
    )
    op.execute(
        f'ALTER TABLE "{s}".deliveries ADD CONSTRAINT deliveries_event_scope '
        f'FOREIGN KEY (event_id, project_id, mode) REFERENCES "{s}".events (id, project_id, mode) '
        "ON DELETE CASCADE"
    )
    op.execute(
        f'ALTER TABLE "{s}".deliveries ADD CONSTRAINT deliveries_endpoint_scope '
        f"FOREIGN KEY (endpoint_id, project_id, mode) "
        f'REFERENCES "{s}".endpoints (id, project_id, mode) ON DELETE CASCADE'
    )
    # Idempotency keys are unique per project and mode: a test publish never answers a live
    # one with the wrong event.
    op.execute(f'DROP INDEX IF EXISTS "{s}".events_idempotency')
    op.execute(
        f'CREATE UNIQUE INDEX events_idempotency ON "{s}".events '
        "(project_id, mode, idempotency_key) WHERE idempotency_key IS NOT NULL"
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS deliveries_project ON "{s}".deliveries (project_id, mode)'
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".deliveries_project')
    op.execute(f'DROP INDEX IF EXISTS "{s}".events_idempotency')
    op.execute(
        f'CREATE UNIQUE INDEX events_idempotency ON "{s}".events (project_id, idempotency_key) '
        "WHERE idempotency_key IS NOT NULL"
    )
    op.execute(
        f'ALTER TABLE "{s}".deliveries DROP CONSTRAINT deliveries_event_scope, '
        "DROP CONSTRAINT deliveries_endpoint_scope"
    )
    op.execute(
        f'ALTER TABLE "{s}".deliveries ADD CONSTRAINT deliveries_event_id_fkey '
        f'FOREIGN KEY (event_id) REFERENCES "{s}".events (id) ON DELETE CASCADE, '
        "ADD CONSTRAINT deliveries_endpoint_id_fkey "
        f'FOREIGN KEY (endpoint_id) REFERENCES "{s}".endpoints (id) ON DELETE CASCADE'
    )
    op.execute(f'ALTER TABLE "{s}".deliveries DROP COLUMN project_id, DROP COLUMN mode')
    for table in ("events", "endpoints"):
        op.execute(f'ALTER TABLE "{s}".{table} DROP CONSTRAINT {table}_scope')
        op.execute(f'ALTER TABLE "{s}".{table} DROP COLUMN mode')
