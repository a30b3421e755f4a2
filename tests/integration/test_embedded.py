"""The embedded Postgres and Redis behind `webhooks dev` and a service-less `make test`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from webhooks.dev import embedded


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_postgres_and_redis_answer_and_are_gone_after_stop(tmp_path: Path) -> None:
    postgres = embedded.start_postgres(tmp_path / "postgres")
    try:
        broker = embedded.start_redis(tmp_path / "redis")
    except BaseException:
        postgres.stop()
        raise
    try:
        assert postgres.url.startswith("postgresql+psycopg://")
        assert broker.url.startswith("redis://127.0.0.1:")
        # The machine's own servers keep their ports.
        assert postgres.port != 5432
        assert broker.port != 6379

        engine = sa.create_engine(postgres.url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        engine.dispose()

        client = redis.Redis.from_url(broker.url)
        assert client.ping() is True
        client.close()
    finally:
        broker.stop()
        postgres.stop()

    assert not is_running(postgres.pid)
    assert not is_running(broker.pid)
    broker.stop()  # stopping twice is harmless
    postgres.stop()


def test_a_second_start_on_the_same_directory_keeps_the_data(tmp_path: Path) -> None:
    first = embedded.start_postgres(tmp_path / "postgres")
    try:
        engine = sa.create_engine(first.url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE kept (id int)"))
        engine.dispose()
    finally:
        first.stop()

    second = embedded.start_postgres(tmp_path / "postgres")
    try:
        engine = sa.create_engine(second.url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM kept")).scalar_one() == 0
        engine.dispose()
    finally:
        second.stop()


def test_a_cluster_that_is_already_running_is_refused_with_the_pid_to_stop(
    tmp_path: Path,
) -> None:
    running = embedded.start_postgres(tmp_path / "postgres")
    try:
        with pytest.raises(embedded.EmbeddedServerError, match=f"pid {running.pid}"):
            embedded.start_postgres(tmp_path / "postgres")
    finally:
        running.stop()
