"""Shared fixtures: real Postgres and Redis (the machine's, or embedded ones), a schema and a
queue per test module, a real receiver, and the Procfile's processes.

With DATABASE_URL and CELERY_BROKER_URL set (CI), those servers are used; unset, embedded
servers are started from PyPI packages. A service that cannot be reached skips the tests
that need it locally, and fails them in CI (CI=true).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.database import create_engine, migrate
from webhooks.sandbox import advance
from webhooks.settings import Settings, normalize_database_url, parse_duration

IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def service_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(database URL, broker URL) of running servers."""
    database_url = os.environ.get("DATABASE_URL")
    broker_url = os.environ.get("CELERY_BROKER_URL")
    started: list[Any] = []
    if not database_url or not broker_url:
        from webhooks.dev import embedded

        root = tmp_path_factory.mktemp("embedded")
        if not database_url:
            started.append(embedded.start_postgres(root / "postgres"))
            database_url = started[-1].url
        if not broker_url:
            started.append(embedded.start_redis(root / "redis"))
            broker_url = started[-1].url
    assert database_url and broker_url
    try:
        engine = sa.create_engine(normalize_database_url(database_url))
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        _unavailable(f"Postgres unreachable at {database_url}: {exc.orig}")
    yield database_url, broker_url
    for server in reversed(started):
        server.stop()


def make_env(service_urls: tuple[str, str], **overrides: str) -> dict[str, str]:
    """The environment of one isolated deployment: its own schema and queue."""
    tag = secrets.token_hex(4)
    env = {
        "DATABASE_URL": service_urls[0],
        "CELERY_BROKER_URL": service_urls[1],
        "WEBHOOKS_DB_SCHEMA": f"t_{tag}",
        "WEBHOOKS_QUEUE": f"q_{tag}",
        "WEBHOOKS_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_RETRY_SCHEDULE": "1s,2s",
        "WEBHOOKS_DISPATCH_POLL": "0.2s",
        "WEBHOOKS_LEASE": "15s",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, service_urls: tuple[str, str]) -> Iterator[dict[str, str]]:
    """An isolated environment per test module; a module may set ``STACK_ENV`` overrides."""
    values = make_env(service_urls, **getattr(request.module, "STACK_ENV", {}))
    settings = Settings.from_env(values)
    migrate(settings)
    yield values
    engine = create_engine(settings, pool_size=1)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{settings.db_schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def stack(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker and one dispatcher, started as the Procfile starts them."""
    stack = Stack(env=env, logdir=tmp_path_factory.mktemp("logs"))
    try:
        stack.start_worker()
        stack.start_dispatcher()
        yield stack
    finally:
        stack.stop()
        print(stack.logs())  # shown by pytest when a test of the module failed


@pytest.fixture
def sandbox_advance(engine: Engine, settings: Settings) -> Callable[[str, str], int]:
    """Fast-forward a project's test-mode deliveries, as `webhooks sandbox advance` does:
    ``sandbox_advance("proj_…", "72h")`` returns how many deliveries moved."""

    def advance_project(project_id: str, duration: str) -> int:
        with engine.begin() as conn:
            moved = advance(conn, settings, project_id=project_id, by=parse_duration(duration))
        return moved.deliveries

    return advance_project


@pytest.fixture
def project() -> str:
    """A fresh project id, so tests sharing a module's stack never see each other's events."""
    return f"proj_{secrets.token_hex(4)}"


@pytest.fixture
def path() -> str:
    """A fresh receiver path for one test."""
    return f"/t/{secrets.token_hex(4)}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Fault tests are slow tests too: `-m "not slow"` is the quick local loop.
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def no_other_due_rows(engine: Engine, settings: Settings) -> None:
    """Settle every due row of the module's schema, for tests that call claim_due directly
    (it takes the oldest due rows of the whole schema)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE \"{settings.db_schema}\".deliveries SET state = 'succeeded' "
                "WHERE state IN ('pending', 'delivering')"
            )
        )
