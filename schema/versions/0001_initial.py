"""The outbox: endpoints, events, deliveries, replay requests and attempts.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = context.config.attributes["schema"]
    op.execute(f"""
    CREATE TABLE "{s}".endpoints (
        id              text PRIMARY KEY,
        project_id      text NOT NULL,
        url             text NOT NULL,
        -- [{{"secret": "whsec_…", "expires_at": null | iso8601}}, …]: every unexpired secret
        -- signs, so a rotation keeps the old one working for its grace period.
        secrets         jsonb NOT NULL,
        event_types     text[] NOT NULL DEFAULT '{{}}',
        enabled         boolean NOT NULL DEFAULT true,
        disabled_reason text,
        created_at      timestamptz NOT NULL,
        updated_at      timestamptz NOT NULL
    )""")
    op.execute(f'CREATE INDEX endpoints_project ON "{s}".endpoints (project_id)')

    op.execute(f"""
    CREATE TABLE "{s}".events (
        id              text PRIMARY KEY,
        project_id      text NOT NULL,
        type            text NOT NULL,
        -- The envelope exactly as sent: the same bytes on every attempt and every replay.
        payload         text NOT NULL,
        idempotency_key text,
        created_at      timestamptz NOT NULL
    )""")
    op.execute(
        f'CREATE UNIQUE INDEX events_idempotency ON "{s}".events (project_id, idempotency_key) '
        "WHERE idempotency_key IS NOT NULL"
    )
    op.execute(f'CREATE INDEX events_created ON "{s}".events (created_at)')

    op.execute(f"""
    CREATE TABLE "{s}".deliveries (
        id               text PRIMARY KEY,
        event_id         text NOT NULL REFERENCES "{s}".events (id) ON DELETE CASCADE,
        endpoint_id      text NOT NULL REFERENCES "{s}".endpoints (id) ON DELETE CASCADE,
        state            text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'delivering', 'succeeded', 'failed')),
        attempt_count    integer NOT NULL DEFAULT 0,
        -- Scheduled attempts that failed: the position in the retry schedule. Replays do
        -- not move it.
        failed_attempts  integer NOT NULL DEFAULT 0,
        -- NULL while pending means held (endpoint disabled): not due until enabled.
        next_attempt_at  timestamptz,
        first_attempt_at timestamptz,
        claim_token      uuid,
        lease_expires_at timestamptz,
        created_at       timestamptz NOT NULL,
        updated_at       timestamptz NOT NULL,
        UNIQUE (event_id, endpoint_id)
    )""")
    # What is due now, and whose lease ran out, stay cheap to find however much history
    # accumulates: both indexes hold only the rows in those states.
    op.execute(
        f'CREATE INDEX deliveries_due ON "{s}".deliveries (next_attempt_at) '
        "WHERE state = 'pending' AND next_attempt_at IS NOT NULL"
    )
    op.execute(
        f'CREATE INDEX deliveries_lease ON "{s}".deliveries (lease_expires_at) '
        "WHERE state = 'delivering'"
    )
    op.execute(f'CREATE INDEX deliveries_endpoint ON "{s}".deliveries (endpoint_id, created_at)')
    # The hot table is updated several times per delivery: vacuum it early and often so dead
    # rows do not pile up in the partial indexes the dispatcher scans.
    op.execute(
        f'ALTER TABLE "{s}".deliveries SET (autovacuum_vacuum_scale_factor = 0, '
        "autovacuum_vacuum_threshold = 1000)"
    )

    op.execute(f"""
    CREATE TABLE "{s}".replays (
        id               bigserial PRIMARY KEY,
        delivery_id      text NOT NULL REFERENCES "{s}".deliveries (id) ON DELETE CASCADE,
        state            text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'delivering', 'done')),
        claim_token      uuid,
        lease_expires_at timestamptz,
        requested_at     timestamptz NOT NULL
    )""")
    op.execute(
        f"CREATE INDEX replays_due ON \"{s}\".replays (requested_at) WHERE state = 'pending'"
    )
    op.execute(
        f'CREATE INDEX replays_lease ON "{s}".replays (lease_expires_at) '
        "WHERE state = 'delivering'"
    )

    op.execute(f"""
    CREATE TABLE "{s}".attempts (
        id               bigserial PRIMARY KEY,
        delivery_id      text NOT NULL REFERENCES "{s}".deliveries (id) ON DELETE CASCADE,
        event_id         text NOT NULL,
        endpoint_id      text NOT NULL,
        number           integer NOT NULL,
        trigger          text NOT NULL CHECK (trigger IN ('scheduled', 'replay')),
        started_at       timestamptz NOT NULL,
        duration_ms      integer NOT NULL,
        request_url      text NOT NULL,
        request_headers  jsonb NOT NULL,
        response_status  integer,
        response_headers jsonb,
        response_body    text,
        error_kind       text CHECK (error_kind IN ('timeout', 'connect', 'dns', 'tls',
                         'blocked', 'redirect', 'http_status', 'body_too_large', 'other')),
        error_message    text
    )""")
    op.execute(f'CREATE INDEX attempts_delivery ON "{s}".attempts (delivery_id, number)')
    op.execute(f'CREATE INDEX attempts_event ON "{s}".attempts (event_id)')


def downgrade() -> None:
    s = context.config.attributes["schema"]
    for table in ("attempts", "replays", "deliveries", "events", "endpoints"):
        op.execute(f'DROP TABLE IF EXISTS "{s}".{table}')
