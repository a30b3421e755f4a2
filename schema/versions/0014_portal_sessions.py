"""The portal: its sessions, and an index for each endpoint's recent attempts.

- ``portal_sessions``: ``ps_…``, a project and a mode (those of the key that asked for it),
  the link's expiry (the session it opens ends then too), when the link was opened and when
  the session was revoked. Only SHA-256 hashes are stored: of the link's token (single use:
  kept to say "already used") and of the session cookie's token it was exchanged for. Both
  are 43 random characters, so no salt or slow hash is needed.
- ``attempts_endpoint_started (endpoint_id, started_at)``: the portal's list of endpoints
  shows each one's attempts over the last 24 h and its last attempt. On a deployment that
  already holds millions of attempts, build it by hand first, without blocking writers::

      CREATE INDEX CONCURRENTLY IF NOT EXISTS attempts_endpoint_started
          ON webhooks.attempts (endpoint_id, started_at);

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-19
"""

from alembic import context, op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS "{s}".portal_sessions (
        id           text PRIMARY KEY,
        project_id   text NOT NULL,
        mode         text NOT NULL CHECK (mode IN ('live', 'test')),
        -- The key that asked for it (not a reference: the Cloud API's keys are not ours).
        key_id       text NOT NULL,
        -- Hex SHA-256 of the link's token and of the session cookie's; neither is stored.
        link_hash    text NOT NULL UNIQUE,
        session_hash text UNIQUE,
        created_at   timestamptz NOT NULL,
        expires_at   timestamptz NOT NULL,
        opened_at    timestamptz,
        revoked_at   timestamptz
    )""")
    op.execute(
        f'CREATE INDEX IF NOT EXISTS portal_sessions_expires ON "{s}".portal_sessions (expires_at)'
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS attempts_endpoint_started ON "{s}".attempts '
        "(endpoint_id, started_at)"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".attempts_endpoint_started')
    op.execute(f'DROP TABLE IF EXISTS "{s}".portal_sessions')
