"""`webhooks doctor`: is this deployment able to deliver right now? One verdict, one exit code.

Each check answers one question and says, when it fails, what to do. They run in order and
each is bounded in time (a few seconds at most), so the doctor can back a readiness probe
(never a liveness probe: it checks shared services, see deploy/README.md). A check whose
prerequisite failed (no database, no broker) is reported as failed with "skipped" in its
detail rather than left out, so the summary always has the same names:

- ``database``: a connection opens and ``SELECT 1`` answers.
- ``schema``: the revision in ``<schema>.alembic_version`` is the head of ``schema/versions``.
- ``broker``: a connection to ``CELERY_BROKER_URL`` opens.
- ``workers``: at least one Celery worker answers a broadcast and consumes our queue
  (``WEBHOOKS_QUEUE``). Any worker on the same broker answers a plain ping, including those
  of other deployments, so the doctor asks each for its queues (``inspect().active_queues``,
  a ping that also says what the worker listens to).
- ``dispatcher``: the freshest dispatcher heartbeat (`webhooks.heartbeats`) is recent.
- ``backlog``: deliveries due now, on enabled endpoints, and how long the oldest has waited;
  and events committed but not yet expanded into deliveries (`webhooks.expansion`), which
  only a dispatcher does: one older than the threshold means no dispatcher is expanding.
  A backlog that ages past the threshold means dispatchers or workers cannot keep up (or are
  gone). One endpoint at its in-flight cap can also age it: read ``webhooks stats``.
- ``clock``: this machine's clock against the database's (`webhooks.clock_offset`): leases
  assume every machine is within 1 s of the database, so more than that fails.
- ``secrets``: whether endpoint secrets are sealed at rest (`WEBHOOKS_SECRET_KEY`). Plain text
  outside `webhooks dev`, or secrets stored before the key was set, pass with a warning
  (``WARN``): deliveries work, but the operator should act.

The broker and worker checks talk to Celery through a private app made from the settings
given (`_celery_app`), imported inside those two checks, so the module loads without Celery.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import schema as schema_package
from webhooks import clock
from webhooks.cli.output import format_age, format_table
from webhooks.clock_offset import MAX_CLOCK_OFFSET, measure_offset
from webhooks.database import SCHEMA_REVISION, describe_url, sql
from webhooks.display import mask_url, mask_urls_in
from webhooks.expansion import awaiting_expansion
from webhooks.heartbeats import list_dispatchers
from webhooks.sealing import PREFIX as SEALED_PREFIX
from webhooks.sealing import plaintext_warning
from webhooks.settings import Settings
from webhooks.stats import due_backlog

DEFAULT_BACKLOG_AGE = timedelta(seconds=60)
DEFAULT_HEARTBEAT_AGE = timedelta(seconds=30)
DEFAULT_TIMEOUT = timedelta(seconds=3)
# How long workers are given to answer the broadcast (Celery's ping default).
WORKER_REPLY_TIMEOUT = timedelta(seconds=1)

PLAINTEXT_ENDPOINTS = f"""
SELECT count(*) FROM {{s}}.endpoints e
WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(e.secrets) item
              WHERE NOT starts_with(item->>'secret', '{SEALED_PREFIX}'))
"""


@dataclass(frozen=True)
class Check:
    """The answer to one question: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str
    # Passed, but something needs the operator's attention (shown as WARN; exit code 0).
    is_warning: bool = False


def run_checks(
    settings: Settings,
    *,
    backlog_age: timedelta = DEFAULT_BACKLOG_AGE,
    heartbeat_age: timedelta = DEFAULT_HEARTBEAT_AGE,
    timeout: timedelta = DEFAULT_TIMEOUT,
    now: datetime | None = None,
) -> list[Check]:
    """Run every check in order and return their results; never raises for a failed check.

    Args:
        settings: the deployment to check.
        backlog_age: the oldest due delivery may wait this long before the check fails.
        heartbeat_age: the freshest dispatcher heartbeat may be this old.
        timeout: the limit for connecting to Postgres and to the broker (workers are
            given `WORKER_REPLY_TIMEOUT` to answer).
        now: the reference time for ages; the clock's by default.
    """
    engine = sa.create_engine(
        settings.database_url,
        poolclass=NullPool,
        connect_args={"connect_timeout": max(1, round(timeout.total_seconds()))},
    )
    try:
        database = _guard("database", lambda: _check_database(engine, settings))
        no_database = None if database.ok else "the database is unreachable"
        schema = _unless(no_database, "schema", lambda: _check_schema(engine, settings))
        broker = _guard("broker", lambda: _check_broker(settings, timeout))
        no_broker = None if broker.ok else "the broker is unreachable"
        workers = _unless(no_broker, "workers", lambda: _check_workers(settings, timeout))
        schema_ok = database.ok and schema.ok
        no_schema = None if schema_ok else "the schema is not ready"
        reference = now or clock.now()
        checks = [
            database,
            schema,
            broker,
            workers,
            _unless(
                no_schema,
                "dispatcher",
                lambda: _check_heartbeat(engine, settings, heartbeat_age, reference),
            ),
            _unless(
                no_schema,
                "backlog",
                lambda: _check_backlog(engine, settings, backlog_age, reference),
            ),
            _unless(no_database, "clock", lambda: _check_clock(engine)),
            _guard("secrets", lambda: _check_secrets(engine, settings, schema_ok)),
        ]
    finally:
        engine.dispose()
    return checks


def verdict(checks: list[Check]) -> tuple[int, str]:
    """Return the exit code (0 healthy, 1 unhealthy) and a summary to print.

    The summary has one line per check (``ok`` or ``FAIL``, name, detail) and a last line
    with the verdict and the names of the failed checks.
    """
    lines = format_table([(_mark(c), c.name, c.detail) for c in checks])
    failed = [c.name for c in checks if not c.ok]
    warned = [c.name for c in checks if c.ok and c.is_warning]
    if failed:
        lines.append(
            f"unhealthy: {len(failed)} of {len(checks)} checks failed ({', '.join(failed)})"
        )
        return 1, "\n".join(lines)
    warnings = f" (with warnings: {', '.join(warned)})" if warned else ""
    lines.append(f"healthy: all {len(checks)} checks passed{warnings}")
    return 0, "\n".join(lines)


def _mark(check: Check) -> str:
    if not check.ok:
        return "FAIL"
    return "WARN" if check.is_warning else "ok  "


def checks_json(checks: list[Check]) -> str:
    """The ``--json`` form: ``{"healthy": bool, "checks": [...]}``.

    Each check is ``{"name", "ok", "detail", "warning"}``; ``warning`` is true for a check
    that passed but wants the operator's attention.
    """
    return json.dumps(
        {
            "healthy": all(c.ok for c in checks),
            "checks": [
                {"name": c.name, "ok": c.ok, "detail": c.detail, "warning": c.is_warning}
                for c in checks
            ],
        },
        indent=2,
    )


def head_revision() -> str:
    """The newest revision in ``schema/versions`` (what `webhooks migrate` would install)."""
    config = Config()
    config.set_main_option("script_location", str(Path(schema_package.__file__).parent))
    head = ScriptDirectory.from_config(config).get_current_head()
    return str(head)


def _unless(skipped_because: str | None, name: str, check: Callable[[], Check]) -> Check:
    """Run ``check``, or report it failed and skipped when its prerequisite failed."""
    if skipped_because is not None:
        return Check(name, False, f"skipped: {skipped_because}")
    return _guard(name, check)


def _guard(name: str, check: Callable[[], Check]) -> Check:
    # A check that breaks in an unforeseen way is a failed check, not a crashed doctor. What
    # a check prints may quote a URL from a library's error: its passwords are masked.
    try:
        result = check()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result = Check(name, False, f"{type(exc).__name__}: {reason}")
    return replace(result, detail=mask_urls_in(result.detail))


def _check_database(engine: Engine, settings: Settings) -> Check:
    where = describe_url(settings.database_url)
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return Check(
            "database",
            False,
            f"cannot reach Postgres at {where}: {reason}; check DATABASE_URL and the server",
        )
    return Check("database", True, f"{where} answered in {_ms(started)} ms")


def _check_schema(engine: Engine, settings: Settings) -> Check:
    head = head_revision()
    with engine.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT to_regclass(:table) IS NOT NULL"),
            {"table": f'"{settings.db_schema}".alembic_version'},
        ).scalar_one()
        current = (
            conn.execute(sql(SCHEMA_REVISION, settings.db_schema)).scalar_one_or_none()
            if exists
            else None
        )
    if current is None:
        return Check(
            "schema",
            False,
            f'schema "{settings.db_schema}" is not migrated (head is {head}); '
            "run `webhooks migrate`",
        )
    if current != head:
        return Check(
            "schema",
            False,
            f'schema "{settings.db_schema}" is at revision {current}, the code expects {head}; '
            "run `webhooks migrate` (before starting new workers)",
        )
    return Check("schema", True, f'schema "{settings.db_schema}" is at head revision {head}')


def _check_broker(settings: Settings, timeout: timedelta) -> Check:
    seconds = timeout.total_seconds()
    where = mask_url(settings.broker_url)
    started = time.monotonic()
    app = _celery_app(settings, timeout)
    try:
        # The app's kombu Connection, with the transport options workers use.
        with app.connection_for_write(settings.broker_url) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=seconds)
    except Exception as exc:
        reason = (str(exc).strip() or type(exc).__name__).rstrip(".")
        return Check(
            "broker",
            False,
            f"cannot reach the broker at {where}: {reason}; check CELERY_BROKER_URL",
        )
    finally:
        app.close()
    return Check("broker", True, f"{where} answered in {_ms(started)} ms")


def _check_workers(settings: Settings, timeout: timedelta) -> Check:
    app = _celery_app(settings, timeout)
    try:
        # Replies are collected until the timeout: it is the check's duration, not a limit.
        replies: dict[str, Any] = (
            app.control.inspect(timeout=WORKER_REPLY_TIMEOUT.total_seconds()).active_queues() or {}
        )
    finally:
        app.close()
    ours = sorted(
        worker
        for worker, queues in replies.items()
        if any(q.get("name") == settings.queue for q in queues or ())
    )
    if not ours:
        others = f" ({len(replies)} other workers answered)" if replies else ""
        return Check(
            "workers",
            False,
            f"no worker consumes queue {settings.queue!r}{others}; start `celery -A workers "
            "worker` with the same WEBHOOKS_QUEUE and CELERY_BROKER_URL",
        )
    shown = ", ".join(ours[:5]) + (", …" if len(ours) > 5 else "")
    return Check("workers", True, f"{len(ours)} on queue {settings.queue!r}: {shown}")


def _celery_app(settings: Settings, timeout: timedelta) -> Any:
    """A private Celery app for these settings (the shared one reads the environment).

    Connections are opened with ``settings.broker_url`` explicitly: Celery's own
    ``broker_url`` prefers the ``CELERY_BROKER_URL`` environment variable over its config.
    """
    from celery import Celery

    from workers.app import celery_config

    app = Celery("webhooks-doctor", set_as_current=False)
    app.conf.update(celery_config(settings), broker_connection_timeout=timeout.total_seconds())
    return app


def _check_heartbeat(engine: Engine, settings: Settings, limit: timedelta, now: datetime) -> Check:
    with engine.connect() as conn:
        dispatchers = list_dispatchers(conn, settings)  # freshest first
    if not dispatchers:
        return Check(
            "dispatcher", False, "no dispatcher has ever reported; start `webhooks dispatcher`"
        )
    age = now - dispatchers[0].seen_at
    detail = f"freshest heartbeat {format_age(age)} ago ({len(dispatchers)} dispatcher rows)"
    if age > limit:
        return Check(
            "dispatcher",
            False,
            f"{detail}, over {format_age(limit)}: no dispatcher is running, or it is stuck",
        )
    return Check("dispatcher", True, detail)


def _check_backlog(engine: Engine, settings: Settings, limit: timedelta, now: datetime) -> Check:
    with engine.connect() as conn:
        backlog = due_backlog(conn, settings, now)
        awaiting = awaiting_expansion(conn, settings, now)
    unexpanded = ""
    if awaiting.oldest_age_seconds is not None:
        expansion_age = timedelta(seconds=awaiting.oldest_age_seconds)
        unexpanded = (
            f"{awaiting.events} events awaiting expansion into deliveries, the oldest for "
            f"{format_age(expansion_age)}"
        )
        if expansion_age > limit:
            return Check(
                "backlog",
                False,
                f"{unexpanded} (over {format_age(limit)}): no dispatcher is expanding them; "
                "start one (`webhooks dispatcher`) or read its logs for the error each round "
                "hits",
            )
    if backlog.oldest_age is None:
        return Check("backlog", True, unexpanded or "nothing due is waiting")
    age = backlog.oldest_age
    detail = f"{backlog.due} due deliveries waiting, the oldest for {format_age(age)}"
    if unexpanded:
        detail += f"; {unexpanded}"
    if age > limit:
        return Check(
            "backlog",
            False,
            f"{detail} (over {format_age(limit)}): dispatchers or workers are not keeping up; "
            "see `webhooks stats`",
        )
    return Check("backlog", True, detail)


def _check_clock(engine: Engine) -> Check:
    with engine.connect() as conn:
        measured = measure_offset(conn)
    if not measured.is_within(MAX_CLOCK_OFFSET):
        return Check(
            "clock",
            False,
            f"{measured.describe()}, over {MAX_CLOCK_OFFSET.total_seconds():g}s: leases would be "
            "reclaimed early and deliveries sent twice; synchronise this machine's clock "
            "(NTP, chrony)",
        )
    return Check("clock", True, measured.describe())


def _check_secrets(engine: Engine, settings: Settings, schema_ok: bool) -> Check:
    warning = plaintext_warning(settings.secret_keys, is_dev=settings.is_dev)
    if warning:
        return Check("secrets", True, warning, is_warning=True)
    if not settings.secret_keys:
        return Check("secrets", True, "stored in plain text (webhooks dev)")
    keys = (
        f"{len(settings.secret_keys)} keys, the first seals"
        if len(settings.secret_keys) > 1
        else "1 key"
    )
    if not schema_ok:
        return Check("secrets", True, f"sealed with WEBHOOKS_SECRET_KEY ({keys})")
    with engine.connect() as conn:
        plain = conn.execute(sql(PLAINTEXT_ENDPOINTS, settings.db_schema)).scalar_one()
    if plain:
        return Check(
            "secrets",
            True,
            f"{plain} endpoints still hold secrets stored before WEBHOOKS_SECRET_KEY was set, in "
            "plain text; run `webhooks secrets reseal`",
            is_warning=True,
        )
    return Check("secrets", True, f"every stored secret is sealed ({keys})")


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
