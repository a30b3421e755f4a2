"""Connections to Postgres, the schema-qualified SQL helper, and migrations.

Every statement names its tables through `sql()`, which puts the configured schema
(`WEBHOOKS_DB_SCHEMA`) in front of them, so the outbox can live in the API's own database
without colliding with its tables.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

import schema as schema_package
from webhooks.errors import DatabaseUnavailable
from webhooks.settings import Settings


def create_engine(settings: Settings, *, pool_size: int = 5) -> Engine:
    """Return an engine for `DATABASE_URL`.

    Connections are checked before use so that a Postgres restart costs one reconnect, not
    a failed delivery.
    """
    return sa.create_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


@functools.lru_cache(maxsize=512)
def sql(statement: str, schema: str) -> sa.TextClause:
    """Return ``statement`` as a SQL clause with ``{s}`` replaced by the quoted schema."""
    return sa.text(statement.replace("{s}", f'"{schema}"'))


def migrate(settings: Settings) -> str:
    """Create or upgrade the webhooks schema; safe to run any number of times, even at once.

    Returns the schema revision now in place.
    """
    config = Config()
    config.set_main_option("script_location", str(Path(schema_package.__file__).parent))
    config.attributes["schema"] = settings.db_schema
    engine = create_engine(settings, pool_size=1)
    try:
        with translate_errors(settings), engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            revision = conn.execute(
                sql("SELECT version_num FROM {s}.alembic_version", settings.db_schema)
            ).scalar_one()
    finally:
        engine.dispose()
    return str(revision)


def describe_url(url: str) -> str:
    """Return the database URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparseable DATABASE_URL)"


@contextmanager
def translate_errors(settings: Settings) -> Iterator[None]:
    """Turn "cannot connect" and "schema missing" into `DatabaseUnavailable` with advice."""
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot reach Postgres at {describe_url(settings.database_url)}: {reason}; "
            "check DATABASE_URL and that the server is running"
        ) from exc
    except ProgrammingError as exc:
        if "does not exist" in str(exc.orig):
            raise DatabaseUnavailable(
                f'the webhooks schema "{settings.db_schema}" is missing or out of date; '
                "run `webhooks migrate`"
            ) from exc
        raise


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean the database went away (restart, network), not bad SQL."""
    return (isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)) or isinstance(
        exc, OperationalError
    )
