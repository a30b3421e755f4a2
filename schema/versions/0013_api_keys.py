"""The HTTP API: its keys, the responses it keeps for `Idempotency-Key`, its rate limits.

- ``api_keys``: ``key_…``, a project and a mode, scope ``read`` | ``write``; only the SHA-256
  of the key is stored (keys are 40 random characters: no salt or slow hash is needed, and a
  lookup by hash is one index probe), with its last four characters to recognise it by.
  ``allowed_networks`` (empty: anywhere), ``expires_at`` (also set on the old key by a
  rotation: the end of its grace period), ``revoked_at``, ``last_used_at`` (written at most
  once a minute per key), ``rotated_from`` (the key a rotation replaced).
- ``api_idempotency``: the first response to a POST with an ``Idempotency-Key``, per project,
  mode and key, with the hash of the request it answered; kept 24 h.
- ``api_rate_limits``: one row per live key, the current window and its count, shared by
  every API process.
- ``api_secrets``: a random key made here, once per schema, that signs list cursors.
- Indexes for the lists, newest first, of a project's endpoints, deliveries and recoveries in
  one mode (events have ``events_project_created`` since 0012).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-12
"""

from alembic import context, op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS "{s}".api_keys (
        id               text PRIMARY KEY,
        project_id       text NOT NULL,
        mode             text NOT NULL CHECK (mode IN ('live', 'test')),
        scope            text NOT NULL CHECK (scope IN ('read', 'write')),
        -- Hex SHA-256 of the whole key; the key itself is never stored.
        key_hash         text NOT NULL UNIQUE,
        last4            text NOT NULL,
        allowed_networks cidr[] NOT NULL DEFAULT '{{}}',
        created_at       timestamptz NOT NULL,
        expires_at       timestamptz,
        revoked_at       timestamptz,
        last_used_at     timestamptz,
        rotated_from     text REFERENCES "{s}".api_keys (id) ON DELETE SET NULL
    )""")
    op.execute(f'CREATE INDEX IF NOT EXISTS api_keys_project ON "{s}".api_keys (project_id, mode)')
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS "{s}".api_idempotency (
        project_id      text NOT NULL,
        mode            text NOT NULL CHECK (mode IN ('live', 'test')),
        idempotency_key text NOT NULL,
        request_hash    text NOT NULL,
        status          integer NOT NULL,
        -- The answer's JSON text, exactly as given: jsonb cannot hold the NUL character
        -- that event data may carry.
        response        text NOT NULL,
        created_at      timestamptz NOT NULL,
        PRIMARY KEY (project_id, mode, idempotency_key)
    )""")
    op.execute(
        f'CREATE INDEX IF NOT EXISTS api_idempotency_created ON "{s}".api_idempotency (created_at)'
    )
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS "{s}".api_rate_limits (
        -- Not a reference: with the Cloud API's own key lookup, its keys are not ours.
        key_id       text PRIMARY KEY,
        window_start timestamptz NOT NULL,
        count        integer NOT NULL
    )""")
    op.execute(f"""
    CREATE TABLE IF NOT EXISTS "{s}".api_secrets (
        name  text PRIMARY KEY,
        value text NOT NULL
    )""")
    # 244 random bits from two version-4 UUIDs (gen_random_uuid is built in since Postgres 13).
    op.execute(
        f'INSERT INTO "{s}".api_secrets (name, value) '
        "VALUES ('cursor_key', replace(gen_random_uuid()::text || gen_random_uuid()::text, "
        "'-', '')) ON CONFLICT (name) DO NOTHING"
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS endpoints_project_mode_created ON "{s}".endpoints '
        "(project_id, mode, created_at, id)"
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS deliveries_project_mode_created ON "{s}".deliveries '
        "(project_id, mode, created_at, id)"
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS recoveries_project_created ON "{s}".recoveries '
        "(project_id, mode, created_at, id)"
    )


def downgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f'DROP INDEX IF EXISTS "{s}".recoveries_project_created')
    op.execute(f'DROP INDEX IF EXISTS "{s}".deliveries_project_mode_created')
    op.execute(f'DROP INDEX IF EXISTS "{s}".endpoints_project_mode_created')
    for table in ("api_secrets", "api_rate_limits", "api_idempotency", "api_keys"):
        op.execute(f'DROP TABLE IF EXISTS "{s}".{table}')
