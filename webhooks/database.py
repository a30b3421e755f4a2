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
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

import schema as schema_package
from webhooks.display import mask_url
from webhooks.errors import DatabaseUnavailable
from webhooks.settings import Settings


def create_engine(
    settings: Settings,
    *,
    pool_size: int = 5,
    pre_ping: bool = True,
    wait_for_flush: bool = True,
    plan_each_query: bool = False,
) -> Engine:
    """Return an engine for `DATABASE_URL`.

    By default connections are checked before use (a ``SELECT 1`` round trip per checkout)
    so that a Postgres restart costs one reconnect, not a failed command. The worker and the
    dispatcher pass ``pre_ping=False``: on their hot paths that round trip is a measurable
    share of the work, and they retry a statement that failed on a dead connection instead.

    ``wait_for_flush=False`` sets ``synchronous_commit=off`` on the engine's sessions: a
    commit returns before its WAL record reaches the disk, and a Postgres crash may forget
    the last few hundred milliseconds of them. Only for writers whose every write is safe to
    forget (the dispatcher: a forgotten claim leaves its row due, and the worker that got
    its message finds the claim token unknown and sends nothing).

    ``plan_each_query=True`` keeps psycopg from preparing statements it runs often: Postgres
    would soon plan a prepared one once for any values (a generic plan), from average
    estimates, and the HTTP API's lists must not: an endpoint with a million attempts is
    no average endpoint, and a plan made for a few rows sorts all of its rows to give a page.
    """
    connect_args: dict[str, Any] = {}
    if not wait_for_flush:
        connect_args["options"] = "-c synchronous_commit=off"
    if plan_each_query:
        connect_args["prepare_threshold"] = None
    return sa.create_engine(
        settings.database_url,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
    )


# The Alembic revision a schema is at (its version table lives in the schema).
SCHEMA_REVISION = "SELECT version_num FROM {s}.alembic_version"


@functools.lru_cache(maxsize=512)
def sql(statement: str, schema: str) -> sa.TextClause:
    """Return ``statement`` as a SQL clause with ``{s}`` replaced by the quoted schema."""
    return sa.text(_qualify(statement, schema))


def _qualify(statement: str, schema: str) -> str:
    return statement.replace("{s}", f'"{schema}"')


def listen(engine: Engine, channel: str) -> psycopg.Connection[Any]:
    """A connection of ``engine``'s, taken out of its pool for good, listening on ``channel``.

    Notifications arrive on the connection that listens, so it cannot go back to a pool;
    it is still made by the engine (same URL, same connect arguments) so there is one way
    to the database. The caller closes it.
    """
    fairy = engine.raw_connection()
    conn = cast("psycopg.Connection[Any]", fairy.driver_connection)
    fairy.detach()
    conn.autocommit = True
    conn.execute(f'LISTEN "{channel}"')
    return conn


def migrate(settings: Settings, revision: str = "head") -> str:
    """Create or upgrade the webhooks schema; safe to run any number of times, even at once.

    Returns the schema revision now in place (``revision``: upgrade only that far).
    """
    config = Config()
    config.set_main_option("script_location", str(Path(schema_package.__file__).parent))
    config.attributes["schema"] = settings.db_schema
    engine = create_engine(settings, pool_size=1)
    try:
        with translate_errors(settings), engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            current = conn.execute(sql(SCHEMA_REVISION, settings.db_schema)).scalar_one()
    finally:
        engine.dispose()
    return str(current)


def describe_url(url: str) -> str:
    """Return the database URL without its passwords (``:pw@``, ``?password=``), for messages."""
    return mask_url(url)


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
        exc, (OperationalError, psycopg.OperationalError)
    )
