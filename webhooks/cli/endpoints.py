"""``webhooks endpoint …``: the URLs events are delivered to."""

from __future__ import annotations

from collections.abc import Sequence

import click

from webhooks.catalogue import unknown_filter_warnings
from webhooks.cli.context import Context, json_option, mode_option, pass_context
from webhooks.cli.output import emit_json, emit_table, rfc3339, warn
from webhooks.database import translate_errors
from webhooks.display import escape_controls
from webhooks.endpoints import (
    add_endpoint,
    delete_endpoint,
    disable_endpoint,
    enable_endpoint,
    get_endpoint,
    list_endpoints,
    rotate_secret,
    set_rate_limit,
    update_endpoint,
)
from webhooks.errors import InvalidArgument
from webhooks.event_types import validate_filters
from webhooks.models import Endpoint
from webhooks.sealing import plaintext_warning
from webhooks.settings import Settings, parse_duration

__all__ = ["endpoint_group"]


@click.group("endpoint")
def endpoint_group() -> None:
    """Manage the URLs events are delivered to."""


def show_endpoint(endpoint: Endpoint, as_json: bool, secret: str | None = None) -> None:
    if as_json:
        data = endpoint.to_json()
        if secret is not None:
            data = {"id": endpoint.id, "secret": secret, **data}
        emit_json(data)
        return
    click.echo(f"id          {endpoint.id}")
    if secret is not None:
        click.echo(f"secret      {secret}   (shown once: store it now)")
    click.echo(f"url         {endpoint.url}")
    click.echo(f"project     {endpoint.project_id}")
    click.echo(f"mode        {endpoint.mode}")
    click.echo(f"events      {', '.join(endpoint.event_types) or '(all)'}")
    if endpoint.description:
        click.echo(f"description {escape_controls(endpoint.description)}")
    click.echo(f"health      {describe_health(endpoint)}")
    if endpoint.rate_limit is not None:
        click.echo(f"rate limit  {endpoint.rate_limit:g}/s")


def describe_health(endpoint: Endpoint) -> str:
    """``healthy``, ``failing since T (reason)``, ``disabled (reason)`` or ``deleted at T``,
    safe to print."""
    if endpoint.health == "deleted":
        return f"deleted at {rfc3339(endpoint.deleted_at)} (nothing more is sent to it)"
    if endpoint.health == "disabled":
        return f"disabled ({escape_controls(endpoint.disabled_reason or '')})"
    if endpoint.health == "failing":
        return f"failing since {rfc3339(endpoint.failing_since)} ({endpoint.failing_reason})"
    return "healthy"


@endpoint_group.command("add")
@click.argument("url")
@click.option("--project", "project_id", required=True, help="Project id (proj_…).")
@click.option("--events", default="", help="Comma-separated types or prefix.* filters.")
@click.option("--rate-limit", "rate", default="off", help="Requests per second at most.")
@mode_option("live", "Receive the project's live events (default) or its test events.")
@json_option
@pass_context
def endpoint_add(
    ctx: Context, url: str, project_id: str, events: str, rate: str, mode: str, as_json: bool
) -> None:
    """Register URL to receive the project's events; prints its id and signing secret."""
    per_second = parse_rate(rate)
    filters = validate_filters(events.split(","))
    with ctx.transaction() as conn:
        endpoint, secret = add_endpoint(
            conn,
            ctx.settings,
            url=url,
            project_id=project_id,
            event_types=filters,
            mode=mode,
        )
        if per_second is not None:
            endpoint = set_rate_limit(conn, ctx.settings, endpoint.id, per_second)
    show_endpoint(endpoint, as_json, secret)
    # Warnings once the endpoint exists (a refused one leaves a single `error:` line).
    warn_if_plaintext(ctx.settings)
    warn_unknown_types(filters)


def warn_unknown_types(filters: Sequence[str]) -> None:
    """Warn about filters the catalogue does not know: not an error, since the API may add
    types before we do."""
    for warning in unknown_filter_warnings(filters):
        warn(warning)


@endpoint_group.command("list")
@click.option("--project", "project_id", default=None, help="Only this project's endpoints.")
@mode_option(None, "Only live or only test endpoints (default: both).")
@json_option
@pass_context
def endpoint_list(ctx: Context, project_id: str | None, mode: str | None, as_json: bool) -> None:
    """List endpoints (never their secrets)."""
    with ctx.transaction() as conn:
        endpoints = list_endpoints(conn, ctx.settings, project_id=project_id, mode=mode)
    if as_json:
        emit_json([e.to_json() for e in endpoints])
        return
    emit_table(
        ["id", "project", "mode", "health", "events", "url"],
        [
            (
                e.id,
                e.project_id,
                e.mode,
                e.health,
                ",".join(e.event_types) or "(all)",
                e.url,
            )
            for e in endpoints
        ],
    )


@endpoint_group.command("show")
@click.argument("endpoint_id")
@json_option
@pass_context
def endpoint_show(ctx: Context, endpoint_id: str, as_json: bool) -> None:
    """Show one endpoint (never its secret), deleted ones too."""
    with ctx.transaction() as conn:
        show_endpoint(get_endpoint(conn, ctx.settings, endpoint_id, include_deleted=True), as_json)


@endpoint_group.command("update")
@click.argument("endpoint_id")
@click.option("--url", default=None, help="New URL; pending deliveries go there.")
@click.option("--events", default=None, help="New comma-separated filter ('' for all types).")
@click.option("--description", default=None, help="Free text for operators ('' to remove).")
@json_option
@pass_context
def endpoint_update(
    ctx: Context,
    endpoint_id: str,
    url: str | None,
    events: str | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Change an endpoint's URL, event filter or description (never its mode or project)."""
    if url is None and events is None and description is None:
        raise click.UsageError("give at least one of --url, --events, --description")
    filters = None if events is None else validate_filters(events.split(","))
    with ctx.transaction() as conn:
        endpoint = update_endpoint(
            conn,
            ctx.settings,
            endpoint_id,
            url=url,
            event_types=filters,
            description=description,
        )
    show_endpoint(endpoint, as_json)
    if filters is not None:
        warn_unknown_types(filters)


@endpoint_group.command("delete")
@click.argument("endpoint_id")
@json_option
@pass_context
def endpoint_delete(ctx: Context, endpoint_id: str, as_json: bool) -> None:
    """Delete an endpoint: its unfinished deliveries are cancelled, nothing more is sent.

    The id is never reused, and its attempts stay readable (`webhooks attempts EVT`).
    """
    with ctx.transaction() as conn:
        show_endpoint(delete_endpoint(conn, ctx.settings, endpoint_id), as_json)


@endpoint_group.command("disable")
@click.argument("endpoint_id")
@click.option("--reason", default=None, help="Why; shown with the endpoint.")
@json_option
@pass_context
def endpoint_disable(ctx: Context, endpoint_id: str, reason: str | None, as_json: bool) -> None:
    """Stop delivering to an endpoint; its deliveries wait until it is enabled."""
    with ctx.transaction() as conn:
        show_endpoint(disable_endpoint(conn, ctx.settings, endpoint_id, reason=reason), as_json)


@endpoint_group.command("enable")
@click.argument("endpoint_id")
@json_option
@pass_context
def endpoint_enable(ctx: Context, endpoint_id: str, as_json: bool) -> None:
    """Deliver to an endpoint again, starting with what it missed."""
    with ctx.transaction() as conn:
        show_endpoint(enable_endpoint(conn, ctx.settings, endpoint_id), as_json)


@endpoint_group.command("check")
@click.argument("endpoint_id")
@json_option
@pass_context
def endpoint_check(ctx: Context, endpoint_id: str, as_json: bool) -> None:
    """Probe a receiver with a valid, a forged, a stale and a repeated event; exit 1 if it errs."""
    from webhooks.receiver_check import check_endpoint

    with ctx.transaction() as conn:
        endpoint = get_endpoint(conn, ctx.settings, endpoint_id)
    with translate_errors(ctx.settings):
        check = check_endpoint(ctx.engine, ctx.settings, endpoint)
    if as_json:
        emit_json(check.to_json())
    else:
        click.echo(f"checking {check.endpoint_id} at {check.url} ({check.mode})")
        emit_table(
            ["probe", "expected", "answer", "result", "hint"],
            [
                (
                    p.probe,
                    p.expected,
                    p.answer,
                    "pass" if p.is_passed else "FAIL",
                    p.verdict.hint,
                )
                for p in check.probes
            ],
        )
        failed = sum(not p.is_passed for p in check.probes)
        click.echo(
            f"all {len(check.probes)} probes were answered as they should be"
            if not failed
            else f"{failed} of {len(check.probes)} probes were not answered as they should be"
        )
    raise SystemExit(0 if check.is_passed else 1)


def parse_rate(text: str) -> float | None:
    if text.strip().lower() in {"off", "none", "0"}:
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise InvalidArgument(
            f"rate limit {text!r} is not a number of requests per second (or off)"
        ) from exc


@endpoint_group.command("rate-limit")
@click.argument("endpoint_id")
@click.argument("rate")
@json_option
@pass_context
def endpoint_rate_limit(ctx: Context, endpoint_id: str, rate: str, as_json: bool) -> None:
    """Limit deliveries to an endpoint to RATE requests per second (`off` to remove)."""
    with ctx.transaction() as conn:
        show_endpoint(set_rate_limit(conn, ctx.settings, endpoint_id, parse_rate(rate)), as_json)


@endpoint_group.command("rotate-secret")
@click.argument("endpoint_id")
@click.option("--grace", default="24h", help="How long the old secret keeps signing.")
@json_option
@pass_context
def endpoint_rotate(ctx: Context, endpoint_id: str, grace: str, as_json: bool) -> None:
    """Give an endpoint a new secret; the old one keeps signing for --grace."""
    grace_period = parse_duration(grace, name="--grace")
    with ctx.transaction() as conn:
        endpoint, secret = rotate_secret(conn, ctx.settings, endpoint_id, grace=grace_period)
    show_endpoint(endpoint, as_json, secret)
    warn_if_plaintext(ctx.settings)


def warn_if_plaintext(settings: Settings) -> None:
    """Say on stderr, before a command stores a secret, that it will be stored in plain text."""
    warning = plaintext_warning(settings.secret_keys, is_dev=settings.is_dev)
    if warning:
        warn(warning)
