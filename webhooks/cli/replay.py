"""``webhooks replay`` and ``webhooks recover``: sending again what was missed."""

from __future__ import annotations

import time

import click

from webhooks import clock
from webhooks.cli.context import Context, json_option, mode_option, parse_time, pass_context
from webhooks.cli.output import emit_json
from webhooks.endpoints import get_endpoint
from webhooks.modes import validate_mode
from webhooks.recovery import (
    RECOVERY_STATES,
    Recovery,
    RecoverySelection,
    cancel_recovery,
    count_selection,
    create_recovery,
    get_recovery,
)
from webhooks.replay import BulkReplay, count_bulk, replay_bulk, replay_event

__all__ = ["recover_group", "replay_command"]


@click.command("replay")
@click.argument("event_id", required=False)
@click.option("--endpoint", "endpoint_id", default=None, help="Only this endpoint.")
@click.option("--since", default=None, help="Bulk: events created since (RFC 3339 or 2h).")
@click.option("--until", default=None, help="Bulk: and before this time.")
@click.option("--status", default=None, help="Bulk: only deliveries in this state (failed).")
@click.option("--dry-run", is_flag=True, help="Bulk: count, queue nothing.")
@json_option
@pass_context
def replay_command(
    ctx: Context,
    event_id: str | None,
    endpoint_id: str | None,
    since: str | None,
    until: str | None,
    status: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Send an event again now (EVENT_ID), or in bulk (--endpoint EP --since T).

    The bulk form creates a recovery of that endpoint (see `webhooks recover`) and returns
    once it is queued; `webhooks recover status REC` follows it.
    """
    if event_id is not None:
        if since or until or status or dry_run:
            raise click.UsageError("--since/--until/--status/--dry-run are for the bulk form")
        with ctx.transaction() as conn:
            result = replay_event(conn, ctx.settings, event_id, endpoint_id=endpoint_id)
        if as_json:
            already = {"already_queued": result.already_queued} if result.already_queued else {}
            emit_json({"queued": result.queued, **already})
        else:
            note = f" ({result.already_queued} already queued)" if result.already_queued else ""
            click.echo(f"queued {result.queued} deliveries for replay{note}")
        return
    if endpoint_id is None or since is None:
        raise click.UsageError("give an EVENT_ID, or --endpoint EP --since T for a bulk replay")
    selection = BulkReplay(
        endpoint_id=endpoint_id,
        since=parse_time(since, option="--since"),
        until=parse_time(until, option="--until") if until else None,
        status=status,
    )
    with ctx.transaction() as conn:
        if dry_run:
            total = count_bulk(conn, ctx.settings, selection)
        else:
            recovery = replay_bulk(conn, ctx.settings, selection)
    if dry_run:
        if as_json:
            emit_json({"queued": 0, "matched": total})
        else:
            click.echo(f"{total} deliveries would be replayed (dry run: nothing queued)")
    elif as_json:
        emit_json({"queued": recovery.total, "recovery": recovery.id})
    else:
        click.echo(
            f"queued {recovery.total} deliveries for replay as recovery {recovery.id} "
            f"(`webhooks recover status {recovery.id}` follows it)"
        )


@click.group("recover", invoke_without_command=True)
@click.option("--project", "project_id", default=None, help="Project id (proj_…).")
@click.option("--endpoint", "endpoint_id", default=None, help="Only this endpoint.")
@click.option("--since", default=None, help="Events created since (RFC 3339 or 2h).")
@click.option("--until", default=None, help="And before this time (default: now).")
@click.option(
    "--state",
    type=click.Choice(RECOVERY_STATES),
    default="failed",
    show_default=True,
    help="Replay only failed deliveries, or all.",
)
@click.option("--type", "event_type", default=None, help="Only this event type (or prefix.*).")
@click.option("--include-unrouted", is_flag=True, help="Also send events the endpoint never had.")
@mode_option(None, "Live (default) or test; with --endpoint, the endpoint's mode.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; queue nothing.")
@click.option("--no-wait", is_flag=True, help="Print the recovery's id and return at once.")
@json_option
@click.pass_context
def recover_group(
    click_ctx: click.Context,
    project_id: str | None,
    endpoint_id: str | None,
    since: str | None,
    until: str | None,
    state: str,
    event_type: str | None,
    include_unrouted: bool,
    mode: str | None,
    dry_run: bool,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Replay what a project's endpoints missed, as a durable job the dispatchers carry out.

    Without --no-wait, shows progress (attempts made and succeeded) until the recovery is
    done; Ctrl-C stops waiting, not the recovery. Exit 0 whatever the outcomes.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    if project_id is None or since is None:
        raise click.UsageError("recover needs --project P and --since T")
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    with ctx.transaction() as conn:
        if mode is None and endpoint_id is not None:
            mode = get_endpoint(conn, ctx.settings, endpoint_id).mode
        selection = RecoverySelection(
            project_id=project_id,
            mode=validate_mode(mode or "live"),
            since=parse_time(since, option="--since"),
            until=parse_time(until, option="--until") if until else clock.now(),
            endpoint_id=endpoint_id,
            delivery_state=None if state == "all" else state,
            event_type=event_type,
            include_unrouted=include_unrouted,
        )
        if dry_run:
            total = count_selection(conn, ctx.settings, selection)
        else:
            recovery = create_recovery(conn, ctx.settings, selection, clock.now())
    if dry_run:
        if as_json:
            emit_json({"total": total, "dry_run": True})
        else:
            click.echo(f"{total} deliveries would be replayed (dry run: nothing queued)")
        return
    if not no_wait:
        recovery = follow_recovery(ctx, recovery)
    show_recovery(recovery, as_json)


def show_recovery(recovery: Recovery, as_json: bool) -> None:
    if as_json:
        emit_json(recovery.to_json())
        return
    click.echo(
        f"{recovery.id}  {recovery.state}: {recovery.total} to replay, {recovery.queued} "
        f"queued, {recovery.sent} sent, {recovery.succeeded} succeeded, {recovery.failed} "
        f"failed, {recovery.held} held"
    )


# How often the progress bar reads the recovery's counts.
FOLLOW_EVERY_SECONDS = 0.5


def follow_recovery(ctx: Context, recovery: Recovery) -> Recovery:
    """Show a progress bar (attempts made and succeeded, ETA) on stderr until it is done.

    Ctrl-C ends the wait; the recovery goes on. Returns the recovery as last read.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sent, {task.fields[succeeded]} succeeded, {task.fields[held]} held"),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=Console(stderr=True)) as progress:
            task = progress.add_task(
                f"recovering {recovery.id}", total=recovery.total, succeeded=0, held=0
            )
            while True:
                progress.update(
                    task,
                    total=recovery.total,
                    completed=recovery.sent,
                    succeeded=recovery.succeeded,
                    held=recovery.held,
                )
                if recovery.is_finished:
                    return recovery
                time.sleep(FOLLOW_EVERY_SECONDS)
                with ctx.transaction() as conn:
                    recovery = get_recovery(conn, ctx.settings, recovery.id, clock.now())
    except KeyboardInterrupt:
        click.echo(
            f"stopped waiting; recovery {recovery.id} goes on "
            f"(`webhooks recover status {recovery.id}`)",
            err=True,
        )
        with ctx.transaction() as conn:
            return get_recovery(conn, ctx.settings, recovery.id, clock.now())


@recover_group.command("status")
@click.argument("recovery_id")
@json_option
@pass_context
def recover_status(ctx: Context, recovery_id: str, as_json: bool) -> None:
    """Show a recovery's progress: replays queued, sent, succeeded, failed and held."""
    with ctx.transaction() as conn:
        show_recovery(get_recovery(conn, ctx.settings, recovery_id, clock.now()), as_json)


@recover_group.command("cancel")
@click.argument("recovery_id")
@json_option
@pass_context
def recover_cancel(ctx: Context, recovery_id: str, as_json: bool) -> None:
    """Stop a recovery: its replays not yet sent are dropped (those on the wire finish)."""
    with ctx.transaction() as conn:
        show_recovery(cancel_recovery(conn, ctx.settings, recovery_id, clock.now()), as_json)
