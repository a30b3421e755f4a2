"""The operator's commands: ``migrate``, ``doctor``, ``stats``, ``prune``, ``secrets
reseal``, and the processes (``dispatcher``, ``api``, ``dev``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from webhooks.cli.context import Context, json_option, pass_context
from webhooks.cli.output import emit_json, format_age, format_table
from webhooks.database import migrate, translate_errors
from webhooks.endpoints import reseal_secrets
from webhooks.models import DELIVERY_STATES
from webhooks.settings import parse_duration

__all__ = [
    "api_command",
    "dev_command",
    "dispatcher_command",
    "doctor_command",
    "migrate_command",
    "prune_command",
    "secrets_group",
    "stats_command",
]


@click.command("migrate")
@pass_context
def migrate_command(ctx: Context) -> None:
    """Create or upgrade the database schema (safe to run any number of times)."""
    revision = migrate(ctx.settings)
    click.echo(f"schema {ctx.settings.db_schema} is at revision {revision}")


@click.command("prune")
@click.option("--older-than", required=True, help="Delete history older than this (30d).")
@click.option("--batch-size", default=5000, show_default=True, help="Rows per transaction.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
@pass_context
def prune_command(
    ctx: Context, older_than: str, batch_size: int, dry_run: bool, as_json: bool
) -> None:
    """Delete old attempts, old events whose deliveries are all finished, finished recoveries,
    revoked or expired API keys, and Idempotency-Key answers past 24 h."""
    from webhooks.retention import prune

    age = parse_duration(older_than, name="--older-than")
    with translate_errors(ctx.settings):
        report = prune(
            ctx.engine, ctx.settings, older_than=age, batch_size=batch_size, dry_run=dry_run
        )
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(report.summary())


@click.command("doctor")
@click.option("--backlog-age", default="60s", show_default=True, help="Oldest due age allowed.")
@click.option(
    "--heartbeat-age", default="30s", show_default=True, help="Dispatcher silence allowed."
)
@click.option("--timeout", default="3s", show_default=True, help="Per check.")
@json_option
@pass_context
def doctor_command(
    ctx: Context, backlog_age: str, heartbeat_age: str, timeout: str, as_json: bool
) -> None:
    """Check the database, schema, broker, workers, dispatchers and backlog; exit 1 if unwell."""
    from webhooks.cli.doctor import checks_json, run_checks, verdict

    checks = run_checks(
        ctx.settings,
        backlog_age=parse_duration(backlog_age, name="--backlog-age"),
        heartbeat_age=parse_duration(heartbeat_age, name="--heartbeat-age"),
        timeout=parse_duration(timeout, name="--timeout"),
    )
    code, text = verdict(checks)
    click.echo(checks_json(checks) if as_json else text)
    raise SystemExit(code)


@click.command("stats")
@click.option("--top", default=10, show_default=True, help="How many endpoints to list.")
@json_option
@pass_context
def stats_command(ctx: Context, top: int, as_json: bool) -> None:
    """Deliveries by state, backlog, and endpoint health."""
    from webhooks.stats import delivery_stats

    with ctx.transaction() as conn:
        stats = delivery_stats(conn, ctx.settings, top=top)
    if as_json:
        emit_json(stats)
    else:
        click.echo(format_stats(stats))


def format_stats(stats: dict[str, Any]) -> str:
    """Render `webhooks.stats.delivery_stats` for a terminal: totals, then a table of the
    endpoints failing most."""
    d = stats["deliveries"]
    e = stats["endpoints"]
    b = stats["backlog"]
    age = b["oldest_due_age_seconds"]
    lines = [
        f"deliveries  {d['total']} total: {d['pending']} pending, {d['delivering']} delivering, "
        f"{d['succeeded']} succeeded, {d['failed']} failed, {d['cancelled']} cancelled",
        f"endpoints   {e['enabled']} enabled, {e['disabled']} disabled, {e['deleted']} deleted, "
        f"{e['breakers_open']} with the circuit breaker open",
        f"backlog     {b['due']} due now"
        + (f", the oldest waiting {format_age(timedelta(seconds=age))}" if age is not None else ""),
        _expansion_line(stats.get("expansion") or {}),
    ]
    r = stats.get("reclaimed_without_attempt") or {}
    if r.get("deliveries"):
        lines.append(
            f"reclaimed   {r['deliveries']} deliveries claimed again with no attempt recorded "
            f"(most: {r['most_reclaims']} times in a row, {r['delivery_id']}; see the "
            "workers' logs for why they never record)"
        )
    rows = stats["top_endpoints"]
    if not rows:
        lines.append("no endpoint has failed or pending deliveries")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"endpoints with the most failed deliveries (top {len(rows)}):")
    lines += format_table(
        [
            (
                row["endpoint_id"],
                row["project_id"],
                _status(row),
                *(row[s] for s in DELIVERY_STATES),
            )
            for row in rows
        ],
        ("endpoint", "project", "status", *DELIVERY_STATES),
    )
    return "\n".join(lines)


def _expansion_line(expansion: dict[str, Any]) -> str:
    # An event waits here only for a dispatcher's next round: one waiting seconds means no
    # dispatcher is expanding (none running, or each round failing: see their logs).
    if not expansion.get("awaiting"):
        return "expansion   every committed event has its deliveries"
    age = timedelta(seconds=expansion["oldest_age_seconds"])
    return (
        f"expansion   {expansion['awaiting']} events awaiting expansion into deliveries, "
        f"the oldest for {format_age(age)}"
    )


def _status(row: dict[str, Any]) -> str:
    if not row["enabled"]:
        reason = row["disabled_reason"]
        return f"disabled ({reason})" if reason else "disabled"
    return "breaker open" if row["breaker_open"] else "enabled"


@click.group("secrets")
def secrets_group() -> None:
    """Endpoint signing secrets at rest."""


@secrets_group.command("reseal")
@json_option
@pass_context
def secrets_reseal(ctx: Context, as_json: bool) -> None:
    """Seal every stored secret under the first WEBHOOKS_SECRET_KEY; drop retired ones.

    Run it after setting a key for the first time (secrets stored before are plain text), and
    after putting a new key first in the list: once it has run, the old key can be removed.
    """
    with translate_errors(ctx.settings):
        report = reseal_secrets(ctx.engine, ctx.settings)
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(
            f"sealed {report.resealed} secrets of {report.endpoints} endpoints under the first "
            f"key of WEBHOOKS_SECRET_KEY; dropped {report.dropped} retired secrets"
        )


@click.command("dispatcher")
@pass_context
def dispatcher_command(ctx: Context) -> None:
    """Run the outbox relay: claim due deliveries and hand them to the workers."""
    from webhooks.logs import configure_logging
    from workers.dispatcher import run_dispatcher

    configure_logging(json_format=ctx.settings.log_format == "json")
    run_dispatcher(ctx.settings)


@click.command("api")
@click.option(
    "--host",
    default="0.0.0.0",  # noqa: S104  a server process: every interface, as flower listens
    show_default=True,
    help="Address to listen on.",
)
@click.option("--port", type=int, default=None, help="Port (default: $PORT, else 8000).")
@pass_context
def api_command(ctx: Context, host: str, port: int | None) -> None:
    """Serve the HTTP API (OpenAPI at /v1/openapi.json)."""
    import os

    from webhooks.api import create_app, serve
    from webhooks.logs import configure_logging

    configure_logging(json_format=ctx.settings.log_format == "json")
    if port is None:
        port = int(os.environ.get("PORT") or 8000)
    serve(create_app(ctx.settings), host=host, port=port)


@click.command("dev")
@click.option("--data-dir", default=".dev", show_default=True, help="Where embedded data lives.")
@click.option("--flower-port", default=5555, show_default=True, help="Flower's port.")
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo event is delivered.")
def dev_command(data_dir: str, flower_port: int, exit_after_demo: bool) -> None:
    """Run everything on this machine: database, broker, workers, Flower and a demo."""
    from webhooks.dev.run import run_dev

    code = run_dev(
        data_dir=Path(data_dir).resolve(), flower_port=flower_port, stop_after_demo=exit_after_demo
    )
    raise SystemExit(code)
