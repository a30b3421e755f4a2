"""Fixtures of the fault tests: a fresh deployment per test, and private servers to break.

Every test gets its own schema and queue (`make_env`), short settings so a lost worker costs
seconds, not minutes, and a `Receiver`. Whatever a test starts (processes, servers) is
stopped by PID in the fixtures' finalizers, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import IN_CI, make_env
from tests.faults.harness import Deployment
from tests.faults.servers import PrivatePostgres, PrivateRedis, postgres_binaries
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.database import create_engine, migrate
from webhooks.settings import Settings

# Short enough that a lost worker or message costs seconds; the lease stays longer than the
# deadline, as the settings insist. The retry schedule is short so that an attempt that does
# fail (a loaded machine can time out) is retried within the test.
FAULT_ENV = {
    "WEBHOOKS_TIMEOUT": "2s",
    "WEBHOOKS_LEASE": "4s",
    "WEBHOOKS_RETRY_SCHEDULE": "1s,2s",
    "WEBHOOKS_RETRY_JITTER": "0",
    "WEBHOOKS_DISPATCH_POLL": "0.2s",
    # The circuit breaker would hold back an endpoint after a few timeouts on a loaded
    # machine: these tests are about faults of our processes, not of endpoints.
    "WEBHOOKS_BREAKER_THRESHOLD": "1000",
}

MakeDeployment = Callable[..., Deployment]


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(_FAILED, False)
    if report.failed:
        item.stash[_FAILED] = True
    return report


def unavailable(message: str) -> None:
    """Skip locally, fail in CI (CI=true): a missing service must not pass silently there."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def purge_queue(broker_url: str, queue: str) -> None:
    """Remove a test's queue from Redis, and the unacked messages killed workers left for it
    (they would otherwise be restored into the queue minutes later, by anyone's worker)."""
    if not broker_url.startswith("redis://"):
        return
    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis.from_url(broker_url, socket_timeout=2)
        for key in client.scan_iter(match=f"{queue}*"):
            client.delete(key)
        # kombu keeps each unacked message as JSON [message, exchange, routing key].
        for tag, raw in client.hscan_iter("unacked"):
            with contextlib.suppress(ValueError, TypeError, IndexError):
                if json.loads(raw)[-1] == queue:
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        client.close()


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    """Attach a figure to the test's report: what ``record_property`` does, without its
    warning under the default ``xunit2`` JUnit family (warnings are errors here, and the
    figures matter more than that schema's purity)."""

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    return record


@pytest.fixture
def deploy(
    request: pytest.FixtureRequest,
    service_urls: tuple[str, str],
    tmp_path: Path,
) -> Iterator[MakeDeployment]:
    """Build a deployment: ``deploy(database_url=…, broker_url=…, **env overrides)``."""
    made: list[Deployment] = []

    def make(
        *, database_url: str | None = None, broker_url: str | None = None, **overrides: str
    ) -> Deployment:
        urls = (database_url or service_urls[0], broker_url or service_urls[1])
        env = make_env(urls, **{**FAULT_ENV, **overrides})
        settings = Settings.from_env(env)
        migrate(settings)
        logdir = tmp_path / f"logs{len(made)}"
        logdir.mkdir()
        deployment = Deployment(
            env=env,
            settings=settings,
            engine=create_engine(settings, pool_size=2),
            stack=Stack(env=env, logdir=logdir),
            receiver=Receiver().start(),
            project=f"proj_{secrets.token_hex(4)}",
        )
        made.append(deployment)
        return deployment

    yield make
    for deployment in reversed(made):
        deployment.stack.stop()
        deployment.receiver.stop()
        if request.node.stash.get(_FAILED, False):
            print(deployment.stack.logs(tail=6000))
        drop = f'DROP SCHEMA IF EXISTS "{deployment.settings.db_schema}" CASCADE'
        with contextlib.suppress(sa.exc.DBAPIError), deployment.engine.begin() as conn:
            conn.execute(sa.text(drop))
        deployment.engine.dispose()
        purge_queue(deployment.settings.broker_url, deployment.settings.queue)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of our own, which a test may stop and start again (never 6379's)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH: cannot run a private Redis to restart")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory).start()
    yield server
    server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A Postgres cluster of our own on a free port, which a test may restart."""
    binaries = postgres_binaries()
    if binaries is None:
        unavailable("no initdb/pg_ctl (pgserver or /usr/lib/postgresql): no private Postgres")
    assert binaries is not None
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root without a `postgres` user: Postgres cannot run")
    server = PrivatePostgres(binaries)
    try:
        server.init().start()
    except Exception as exc:
        log = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
        server.destroy()
        unavailable(f"could not start a private Postgres: {exc}\n{log}")
    yield server
    server.destroy()
