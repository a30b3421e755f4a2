"""Recoveries, and replays that are admitted like scheduled work and queued at most once.

- ``recoveries``: a bulk replay as a durable job (``rec_…``), carried out by the dispatchers
  batch by batch; ``cursor_at``/``cursor_id`` is the last event (by creation time, then id)
  a batch covered, moved in the same transaction that queues the batch's replays.
- ``replays`` gains ``due_at`` (a replay deferred by its endpoint's breaker or rate limit
  waits in Postgres, as deliveries do), ``recovery_id`` (the recovery that queued it) and
  ``outcome`` (``succeeded`` | ``failed``, the attempt it made: a recovery's progress is
  counted from these), and the state ``cancelled`` (dropped by `recover cancel` unsent).
- ``replays_live``: at most one pending or delivering replay per delivery.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09
"""

from alembic import context, op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS "{s}".recoveries (
        id               text PRIMARY KEY,
        project_id       text NOT NULL,
        mode             text NOT NULL CHECK (mode IN ('live', 'test')),
        endpoint_id      text,
        since            timestamptz NOT NULL,
        until            timestamptz NOT NULL,
        -- NULL: deliveries in any state.
        delivery_state   text,
        event_type       text,
        include_unrouted boolean NOT NULL DEFAULT false,
        state            text NOT NULL DEFAULT 'running'
                         CHECK (state IN ('running', 'done', 'cancelled')),
        cursor_at        timestamptz,
        cursor_id        text,
        -- Every event of the selection has been looked at (replays may still be pending).
        scanned          boolean NOT NULL DEFAULT false,
        -- How many replays it will queue: counted at creation, exact once scanned.
        total            integer NOT NULL DEFAULT 0,
        created_at       timestamptz NOT NULL,
        updated_at       timestamptz NOT NULL,
        finished_at      timestamptz,
        -- A recovery of one endpoint stays in that endpoint's project and mode.
        FOREIGN KEY (endpoint_id, project_id, mode)
            REFERENCES "{s}".endpoints (id, project_id, mode) ON DELETE CASCADE
    )""")
    op.execute(
        f'CREATE INDEX IF NOT EXISTS recoveries_running ON "{s}".recoveries (updated_at) '
        "WHERE state = 'running'"
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS recoveries_finished ON "{s}".recoveries (finished_at) '
        "WHERE state <> 'running'"
    )
    # A recovery walks a project's events of one mode by creation time.
    op.execute(
        f'CREATE INDEX IF NOT EXISTS events_project_created ON "{s}".events '
        "(project_id, mode, created_at, id)"
    )

    op.execute(
        f'ALTER TABLE "{s}".replays ADD COLUMN IF NOT EXISTS due_at timestamptz, '
        "ADD COLUMN IF NOT EXISTS outcome text CHECK (outcome IN ('succeeded', 'failed')), "
        f'ADD COLUMN IF NOT EXISTS recovery_id text REFERENCES "{s}".recoveries (id) '
        "ON DELETE SET NULL"
    )
    op.execute(f'UPDATE "{s}".replays SET due_at = requested_at WHERE due_at IS NULL')
    op.execute(
        f'ALTER TABLE "{s}".replays ALTER COLUMN due_at SET NOT NULL, '
        "ALTER COLUMN due_at SET DEFAULT now()"
    )
    op.execute(f'ALTER TABLE "{s}".replays DROP CONSTRAINT IF EXISTS replays_state_check')
    op.execute(
        f'ALTER TABLE "{s}".replays ADD CONSTRAINT replays_state_check '
        "CHECK (state IN ('pending', 'delivering', 'done', 'cancelled'))"
    )
    # Replays queued twice before this revision: keep the oldest of each delivery.
    op.execute(f"""
    UPDATE "{s}".replays r SET state = 'cancelled'
    WHERE r.state IN ('pending', 'delivering') AND EXISTS (
        SELECT 1 FROM "{s}".replays o
        WHERE o.delivery_id = r.delivery_id AND o.state IN ('pending', 'delivering')
          AND o.id < r.id)""")
    op.execute(
        f'CREATE UNIQUE INDEX IF NOT EXISTS replays_live ON "{s}".replays (delivery_id) '
        "WHERE state IN ('pending', 'delivering')"
    )
    op.execute(f'DROP INDEX IF EXISTS "{s}".replays_due')
    op.execute(f"CREATE INDEX replays_due ON \"{s}\".replays (due_at, id) WHERE state = 'pending'")
    op.execute(
        f'CREATE INDEX IF NOT EXISTS replays_recovery ON "{s}".replays (recovery_id, state) '
        "WHERE recovery_id IS NOT NULL"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".replays_recovery')
    op.execute(f'DROP INDEX IF EXISTS "{s}".replays_due')
    op.execute(
        f"CREATE INDEX replays_due ON \"{s}\".replays (requested_at) WHERE state = 'pending'"
    )
    op.execute(f'DROP INDEX IF EXISTS "{s}".replays_live')
    op.execute(f"DELETE FROM \"{s}\".replays WHERE state = 'cancelled'")
    op.execute(f'ALTER TABLE "{s}".replays DROP CONSTRAINT IF EXISTS replays_state_check')
    op.execute(
        f'ALTER TABLE "{s}".replays ADD CONSTRAINT replays_state_check '
        "CHECK (state IN ('pending', 'delivering', 'done'))"
    )
    op.execute(
        f'ALTER TABLE "{s}".replays DROP COLUMN recovery_id, DROP COLUMN outcome, '
        "DROP COLUMN due_at"
    )
    op.execute(f'DROP INDEX IF EXISTS "{s}".events_project_created')
    op.execute(f'DROP TABLE IF EXISTS "{s}".recoveries')
