"""`WEBHOOKS_DB_SCHEMA` is judged by the names Postgres will really see: the longest schema
whose NOTIFY channel fits publishes and wakes a dispatcher; one character more is refused at
start-up with one line, before anything is created."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import make_env
from tests.support.cli import cli_ok, run_cli
from webhooks.database import create_engine
from webhooks.settings import Settings


@pytest.fixture
def long_schema_env(service_urls: tuple[str, str]) -> Iterator[dict[str, str]]:
    env = make_env(service_urls)
    # 59 characters: the channel "<schema>_due" is exactly Postgres's 63 bytes.
    env["WEBHOOKS_DB_SCHEMA"] = (env["WEBHOOKS_DB_SCHEMA"] + "_" + "x" * 59)[:59]
    yield env
    engine = create_engine(Settings.from_env(env), pool_size=1)
    with engine.begin() as conn:
        # The longer one too, in case it was created (it must not be).
        for name in (env["WEBHOOKS_DB_SCHEMA"], env["WEBHOOKS_DB_SCHEMA"] + "y"):
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()


def test_the_longest_schema_name_works_and_one_character_more_is_refused_at_start_up(
    long_schema_env: dict[str, str], project: str
) -> None:
    cli_ok(long_schema_env, "migrate")
    published = cli_ok(
        long_schema_env, "publish", "deployment.succeeded", "--project", project,
        "--data", "{}", "--json",
    )  # fmt: skip
    assert published["id"].startswith("evt_")

    too_long = {
        **long_schema_env,
        "WEBHOOKS_DB_SCHEMA": long_schema_env["WEBHOOKS_DB_SCHEMA"] + "y",
    }
    for args in (("migrate",), ("endpoint", "list")):
        result = run_cli(too_long, *args)
        assert result.returncode == 1, result.stdout
        [line] = result.stderr.splitlines()
        assert line.startswith("error: WEBHOOKS_DB_SCHEMA is 60 characters long")
        assert "NOTIFY channel" in line and "at most 59" in line
    engine = create_engine(Settings.from_env(long_schema_env), pool_size=1)
    with engine.connect() as conn:
        created = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :name"),
            {"name": too_long["WEBHOOKS_DB_SCHEMA"]},
        ).scalar_one()
    engine.dispose()
    assert created == 0
