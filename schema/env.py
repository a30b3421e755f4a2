"""Alembic environment: migrations run inside the webhooks schema, with its own version table.

The connection and the schema name are handed over by `webhooks.database.migrate` through
``config.attributes``; there is no alembic.ini, so the schema name is never read from a file
that could disagree with `WEBHOOKS_DB_SCHEMA`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

config = context.config
connection = config.attributes["connection"]
schema = config.attributes["schema"]

# Two `webhooks migrate` started at once (several deploy hooks, several pods) must not race
# on CREATE SCHEMA or on the version table: they take turns on a transaction-scoped lock.
connection.execute(
    text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"webhooks-migrate:{schema}"}
)
connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))

context.configure(
    connection=connection,
    version_table_schema=schema,
    version_table="alembic_version",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
