"""The ``webhooks`` admin command: endpoints, publish, inspect, replay, and the processes.

Errors are one line on stderr starting ``error:``, exit 1 for bad input or a failed
operation, 2 for usage errors; a traceback only with ``--debug``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from webhooks import __version__, clock
from webhooks.catalogue import CATALOGUE, example_data, unknown_filter_warnings
from webhooks.database import create_engine, migrate, translate_errors
from webhooks.display import escape_controls, escape_controls_in_json, mask_urls_in
from webhooks.endpoints import (
    add_endpoint,
    delete_endpoint,
    disable_endpoint,
    enable_endpoint,
    get_endpoint,
    list_endpoints,
    reseal_secrets,
    rotate_secret,
    set_rate_limit,
    update_endpoint,
)
from webhooks.errors import InvalidArgument, InvalidPayload, WebhookError
from webhooks.event_types import validate_filters
from webhooks.expansion import expand_event
from webhooks.history import (
    MAX_LISTED,
    get_deliveries,
    get_envelope,
    list_attempts,
    list_deliveries,
)
from webhooks.keys import (
    SCOPES,
    ApiKey,
    create_key,
    list_keys,
    revoke_key,
    rotate_key,
)
from webhooks.keys import parse_networks as parse_key_networks
from webhooks.models import DELIVERY_STATES, Attempt, Endpoint, rfc3339
from webhooks.modes import MODES, validate_mode
from webhooks.outbox import publish_event
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
from webhooks.sandbox import advance, trigger_event
from webhooks.sealing import plaintext_warning
from webhooks.settings import Settings, parse_duration

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def mode_option(default: str | None, help: str) -> Callable[[F], F]:
    """``--mode live|test``; None as the default means both modes."""
    return click.option("--mode", type=click.Choice(MODES), default=default, help=help)


class Context:
    """Settings and a lazily created engine, shared by one invocation's commands."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.settings, pool_size=1)
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with translate_errors(self.settings), self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


pass_context = click.make_pass_decorator(Context)


def emit_json(value: Any) -> None:
    # Receivers' text (bodies, headers) is in there: no raw C1 control reaches the terminal.
    click.echo(escape_controls_in_json(json.dumps(value, indent=2, ensure_ascii=False)))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    # Cells may hold a receiver's text: control characters are shown as visible escapes.
    cells = [[("-" if v is None else escape_controls(str(v))) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def warn_if_plaintext(settings: Settings) -> None:
    """Say on stderr, before a command stores a secret, that it will be stored in plain text."""
    warning = plaintext_warning(settings.secret_keys, is_dev=settings.is_dev)
    if warning:
        click.echo(f"warning: {warning}", err=True)


def parse_time(text: str, *, option: str) -> datetime:
    """An RFC 3339 time (``2026-11-28T10:00:00Z``) or a duration ago (``2h``)."""
    if re.fullmatch(r"\d+(\.\d+)?[smhd]", text.strip()):
        return clock.now() - parse_duration(text, name=option)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidArgument(
            f"{option} {text!r} is not a time; use RFC 3339 (2026-11-28T10:00:00Z) or an age "
            "such as 2h"
        ) from exc
    if moment.tzinfo is None:
        raise InvalidArgument(f"{option} {text!r} has no timezone; add Z for UTC")
    return moment


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.version_option(__version__, prog_name="webhooks")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Webhook delivery for the Cloud API: endpoints, events, attempts and replay."""
    ctx.obj = Context()
    ctx.call_on_close(ctx.obj.close)


@cli.command("migrate")
@pass_context
def migrate_command(ctx: Context) -> None:
    """Create or upgrade the database schema (safe to run any number of times)."""
    revision = migrate(ctx.settings)
    click.echo(f"schema {ctx.settings.db_schema} is at revision {revision}")


# -- endpoints ---------------------------------------------------------------------------------


@cli.group("endpoint")
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
        click.echo(f"warning: {warning}", err=True)


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


@cli.group("secrets")
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


# -- events ------------------------------------------------------------------------------------


def read_data(value: str) -> Any:
    """The JSON value of ``--data``: inline, ``@FILE`` or ``-`` (stdin), read as UTF-8.

    Whatever the input (not UTF-8, not JSON, nested past the parser's depth, a number too
    long to convert), the answer is a value or `InvalidPayload`, never another exception.
    """
    if value == "-":
        text = _decode(sys.stdin.buffer.read(), "standard input")
    elif value.startswith("@"):
        try:
            raw = Path(value[1:]).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read --data file {value[1:]}: {exc.strerror}") from exc
        text = _decode(raw, f"file {value[1:]}")
    else:
        text = value
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise InvalidPayload("--data is nested too deeply to be read; flatten it") from exc
    except ValueError as exc:  # JSONDecodeError, and int() refusing a 5,000-digit number
        raise InvalidPayload(f"--data is not valid JSON: {exc}") from exc


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(
            f"--data {source} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from exc


@cli.command("publish")
@click.argument("event_type")
@click.option("--project", "project_id", required=True, help="Project id (proj_…).")
@click.option("--data", required=True, help="A JSON object, @FILE, or - for stdin.")
@click.option("--idempotency-key", default=None, help="Publishing the same key twice is a no-op.")
@mode_option("live", "A live event (default) or a test event, for test endpoints only.")
@json_option
@pass_context
def publish_command(
    ctx: Context,
    event_type: str,
    project_id: str,
    data: str,
    idempotency_key: str | None,
    mode: str,
    as_json: bool,
) -> None:
    """Publish an event of EVENT_TYPE, as the API would."""
    payload = read_data(data)
    with ctx.transaction() as conn:
        result = publish_event(
            conn,
            ctx.settings,
            project_id=project_id,
            type=event_type,
            data=payload,
            idempotency_key=idempotency_key,
            mode=mode,
        )
    if as_json:
        emit_json({"id": result.id, "duplicate": result.duplicate, "mode": mode})
    else:
        click.echo(
            result.id
            + ("  (already published with this idempotency key)" if result.duplicate else "")
        )


@cli.command("event-types")
@json_option
def event_types_command(as_json: bool) -> None:
    """List the event types the Cloud API emits, each with an example of its data."""
    if as_json:
        emit_json([entry.to_json() for entry in CATALOGUE])
        return
    emit_table(["type", "description"], [(e.type, e.description) for e in CATALOGUE])


@cli.group("event")
def event_group() -> None:
    """Inspect events."""


def attempt_rows(attempts: Sequence[Attempt]) -> list[tuple[Any, ...]]:
    return [
        (
            a.endpoint_id,
            a.number,
            a.trigger,
            rfc3339(a.started_at),
            f"{a.duration_ms}ms",
            a.response_status,
            a.error_kind or "ok",
            (a.error_message or a.response_body or "")[:60],
        )
        for a in attempts
    ]


ATTEMPT_HEADERS = ["endpoint", "#", "trigger", "started", "took", "status", "result", "detail"]


@event_group.command("show")
@click.argument("event_id")
@json_option
@pass_context
def event_show(ctx: Context, event_id: str, as_json: bool) -> None:
    """Show an event, its deliveries and every attempt."""
    with ctx.transaction() as conn:
        envelope = get_envelope(conn, ctx.settings, event_id)
        deliveries = get_deliveries(conn, ctx.settings, event_id)
    if as_json:
        emit_json({"event": envelope, "deliveries": [d.to_json() for d in deliveries]})
        return
    click.echo(f"event       {envelope['id']}  {envelope['type']}")
    click.echo(f"project     {envelope['project_id']}")
    click.echo(f"created     {envelope['created_at']}")
    click.echo("")
    emit_table(
        ["delivery", "endpoint", "state", "attempts", "next attempt"],
        [
            (d.id, d.endpoint_id, d.state, d.attempt_count, rfc3339(d.next_attempt_at))
            for d in deliveries
        ],
    )
    attempts = [a for d in deliveries for a in d.attempts]
    if attempts:
        click.echo("")
        emit_table(ATTEMPT_HEADERS, attempt_rows(attempts))


@cli.command("attempts")
@click.argument("event_id")
@click.option("--endpoint", "endpoint_id", default=None, help="Only attempts to this endpoint.")
@json_option
@pass_context
def attempts_command(ctx: Context, event_id: str, endpoint_id: str | None, as_json: bool) -> None:
    """List every attempt to deliver an event."""
    with ctx.transaction() as conn:
        attempts = list_attempts(conn, ctx.settings, event_id, endpoint_id=endpoint_id)
    if as_json:
        emit_json([a.to_json() for a in attempts])
    elif attempts:
        emit_table(ATTEMPT_HEADERS, attempt_rows(attempts))
    else:
        click.echo(f"no attempts yet for {event_id}")


@cli.command("deliveries")
@click.option("--project", "project_id", required=True, help="Project id (proj_…).")
@click.option("--endpoint", "endpoint_id", default=None, help="Only this endpoint's.")
@click.option("--state", type=click.Choice(DELIVERY_STATES), default=None, help="Only these.")
@mode_option(None, "Only live or only test deliveries (default: both).")
@click.option("--since", default=None, help="Created since (RFC 3339, or an age such as 2h).")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LISTED),
    default=50,
    show_default=True,
    help="How many at most.",
)
@json_option
@pass_context
def deliveries_command(
    ctx: Context,
    project_id: str,
    endpoint_id: str | None,
    state: str | None,
    mode: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List a project's deliveries, newest first, with how each last went."""
    created_since = parse_time(since, option="--since") if since else None
    with ctx.transaction() as conn:
        found = list_deliveries(
            conn,
            ctx.settings,
            project_id=project_id,
            endpoint_id=endpoint_id,
            state=state,
            mode=mode,
            since=created_since,
            limit=limit,
        )
    if as_json:
        emit_json([d.to_json() for d in found])
        return
    if not found:
        click.echo(f"no deliveries of {project_id} match")
        return
    emit_table(
        [
            "delivery",
            "created",
            "event",
            "type",
            "endpoint",
            "mode",
            "state",
            "#",
            "last",
            "next attempt",
        ],
        [
            (
                d.id,
                rfc3339(d.created_at),
                d.event_id,
                d.event_type,
                d.endpoint_id,
                d.mode,
                d.state,
                d.attempt_count,
                str(d.last_status or "")
                + (" " if d.last_status and d.last_error_kind else "")
                + (d.last_error_kind or "")
                or None,
                rfc3339(d.next_attempt_at),
            )
            for d in found
        ],
    )


# -- replay ------------------------------------------------------------------------------------


@cli.command("replay")
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


# -- recoveries --------------------------------------------------------------------------------


@cli.group("recover", invoke_without_command=True)
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


# -- the sandbox -------------------------------------------------------------------------------


@cli.group("sandbox")
def sandbox_group() -> None:
    """Test-mode tools: fast-forward a project's test deliveries."""


@cli.command("trigger")
@click.argument("event_type")
@click.option("--project", "project_id", required=True, help="Project id (proj_…).")
@click.option("--endpoint", "endpoint_id", default=None, help="Only this test endpoint.")
@click.option("--data", default=None, help="A JSON object, @FILE, or - (default: an example).")
@json_option
@pass_context
def trigger_command(
    ctx: Context,
    event_type: str,
    project_id: str,
    endpoint_id: str | None,
    data: str | None,
    as_json: bool,
) -> None:
    """Send a simulated test-mode EVENT_TYPE event to the project's test endpoints.

    It goes through the real pipeline (outbox, dispatcher, worker, signed POST, stored
    attempts) with the catalogue's example data unless --data is given; `--endpoint` sends
    it to that one test endpoint, whatever its filter. Live endpoints never receive it.
    """
    payload = example_data(event_type) if data is None else read_data(data)
    with ctx.transaction() as conn:
        result = trigger_event(
            conn,
            ctx.settings,
            project_id=project_id,
            event_type=event_type,
            data=payload,
            endpoint_id=endpoint_id,
        )
    # Committed like any publish; expanded here at once (as a dispatcher would, or after
    # the one that got there first) so the developer learns where it went.
    with ctx.transaction() as conn:
        routed = expand_event(conn, ctx.settings, result.id)
    if routed == 0:
        click.echo(
            f"warning: no test endpoint of {project_id} subscribes to {event_type}; add one "
            f"with `webhooks endpoint add URL --project {project_id} --mode test`",
            err=True,
        )
    if as_json:
        emit_json({"id": result.id, "mode": "test", "deliveries": routed})
    else:
        plural = "delivery" if routed == 1 else "deliveries"
        click.echo(f"{result.id}  (test mode, {routed} {plural})")


@sandbox_group.command("advance")
@click.argument("duration")
@click.option("--project", "project_id", required=True, help="Project id (proj_…).")
@json_option
@pass_context
def sandbox_advance(ctx: Context, duration: str, project_id: str, as_json: bool) -> None:
    """Make the project's pending test deliveries due DURATION sooner (e.g. 72h).

    A delivery due in less than DURATION becomes due now (in real time it would have been
    attempted then). Retry windows and the endpoints' failing-since clocks move with them, so
    running it in a loop plays out the schedule, exhaustion and auto-disable with real
    attempts. Live rows are never touched.
    """
    by = parse_duration(duration, name="DURATION")
    with ctx.transaction() as conn:
        advanced = advance(conn, ctx.settings, project_id=project_id, by=by)
    if as_json:
        emit_json({"moved": advanced.deliveries, "endpoints": advanced.endpoints})
    else:
        plural = "delivery" if advanced.deliveries == 1 else "deliveries"
        click.echo(
            f"moved {advanced.deliveries} test {plural} of {project_id} up to {duration} forward"
        )


# -- operations --------------------------------------------------------------------------------


@cli.command("prune")
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


@cli.command("doctor")
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
    from workers.doctor import checks_json, run_checks, verdict

    checks = run_checks(
        ctx.settings,
        backlog_age=parse_duration(backlog_age, name="--backlog-age"),
        heartbeat_age=parse_duration(heartbeat_age, name="--heartbeat-age"),
        timeout=parse_duration(timeout, name="--timeout"),
    )
    code, text = verdict(checks)
    click.echo(checks_json(checks) if as_json else text)
    raise SystemExit(code)


@cli.command("stats")
@click.option("--top", default=10, show_default=True, help="How many endpoints to list.")
@json_option
@pass_context
def stats_command(ctx: Context, top: int, as_json: bool) -> None:
    """Deliveries by state, backlog, and endpoint health."""
    from webhooks.stats import delivery_stats, format_stats

    with ctx.transaction() as conn:
        stats = delivery_stats(conn, ctx.settings, top=top)
    if as_json:
        emit_json(stats)
    else:
        click.echo(format_stats(stats))


# -- API keys ----------------------------------------------------------------------------------


@cli.group("key")
def key_group() -> None:
    """API keys for the HTTP API: create, list, rotate, revoke."""


def show_new_key(api_key: ApiKey, key: str, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "id": api_key.id,
                "key": key,
                "project_id": api_key.project_id,
                "mode": api_key.mode,
                "scope": api_key.scope,
                "expires_at": rfc3339(api_key.expires_at),
                "allowed_networks": [str(n) for n in api_key.allowed_networks],
            }
        )
        return
    click.echo(f"{api_key.id}  {api_key.project_id}  {api_key.mode}  {api_key.scope}")
    click.echo(key)
    click.echo("This key is shown once: store it now (only its hash is kept).", err=True)


@key_group.command("create")
@click.option("--project", "project_id", required=True, help="Project id (proj_…).")
@click.option("--mode", type=click.Choice(MODES), required=True, help="sk_live_ or sk_test_ key.")
@click.option("--scope", type=click.Choice(SCOPES), default="write", show_default=True)
@click.option("--allow-ip", "allow_ip", default="", help="Comma-separated CIDRs it works from.")
@click.option("--expires-in", default=None, help="Stop working after this long, e.g. 90d.")
@json_option
@pass_context
def key_create(
    ctx: Context,
    project_id: str,
    mode: str,
    scope: str,
    allow_ip: str,
    expires_in: str | None,
    as_json: bool,
) -> None:
    """Create an API key for one project and mode; the key is printed once."""
    networks = parse_key_networks(allow_ip.split(","))
    expiry = parse_duration(expires_in, name="--expires-in") if expires_in else None
    with ctx.transaction() as conn:
        api_key, key = create_key(
            conn,
            ctx.settings.db_schema,
            project_id=project_id,
            mode=mode,
            scope=scope,
            allowed_networks=networks,
            expires_in=expiry,
        )
    show_new_key(api_key, key, as_json)


@key_group.command("list")
@click.option("--project", "project_id", default=None, help="Only this project's keys.")
@mode_option(None, "Only live or only test keys (default: both).")
@json_option
@pass_context
def key_list(ctx: Context, project_id: str | None, mode: str | None, as_json: bool) -> None:
    """List API keys (never the keys themselves: only their last four characters)."""
    with ctx.transaction() as conn:
        keys = list_keys(conn, ctx.settings.db_schema, project_id=project_id, mode=mode)
    if as_json:
        emit_json([k.to_json() for k in keys])
        return
    now = clock.now()
    emit_table(
        ("id", "project", "mode", "scope", "key", "state", "expires", "last used"),
        [
            (
                k.id,
                k.project_id,
                k.mode,
                k.scope,
                f"…{k.last4}",
                "revoked" if k.revoked_at else ("active" if k.is_usable(now) else "expired"),
                rfc3339(k.expires_at),
                rfc3339(k.last_used_at),
            )
            for k in keys
        ],
    )


@key_group.command("rotate")
@click.argument("key_id")
@click.option("--grace", default="24h", show_default=True, help="How long the old key works.")
@json_option
@pass_context
def key_rotate(ctx: Context, key_id: str, grace: str, as_json: bool) -> None:
    """Replace a key with a new one (printed once); the old one works for the grace period."""
    with ctx.transaction() as conn:
        api_key, key = rotate_key(
            conn, ctx.settings.db_schema, key_id, grace=parse_duration(grace, name="--grace")
        )
    show_new_key(api_key, key, as_json)


@key_group.command("revoke")
@click.argument("key_id")
@pass_context
def key_revoke(ctx: Context, key_id: str) -> None:
    """Revoke a key at once: requests with it are answered 401."""
    with ctx.transaction() as conn:
        api_key = revoke_key(conn, ctx.settings.db_schema, key_id)
    click.echo(f"revoked {api_key.id}")


# -- processes ---------------------------------------------------------------------------------


@cli.command("dispatcher")
@pass_context
def dispatcher_command(ctx: Context) -> None:
    """Run the outbox relay: claim due deliveries and hand them to the workers."""
    from webhooks.logs import configure_logging
    from workers.dispatcher import run_dispatcher

    configure_logging(json_format=ctx.settings.log_format == "json")
    run_dispatcher(ctx.settings)


@cli.command("api")
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


@cli.command("dev")
@click.option("--data-dir", default=".dev", show_default=True, help="Where embedded data lives.")
@click.option("--flower-port", default=5555, show_default=True, help="Flower's port.")
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo event is delivered.")
def dev_command(data_dir: str, flower_port: int, exit_after_demo: bool) -> None:
    """Run everything on this machine: database, broker, workers, Flower and a demo."""
    from webhooks.dev import run_dev

    code = run_dev(
        data_dir=Path(data_dir).resolve(), flower_port=flower_port, stop_after_demo=exit_after_demo
    )
    raise SystemExit(code)


# -- entry point -------------------------------------------------------------------------------


def fail(message: str, code: int) -> NoReturn:
    # One line, whatever the message quotes: no URL password, no raw control character.
    click.echo("error: " + escape_controls(mask_urls_in(" ".join(message.split()))), err=True)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; turn every error into one ``error:`` line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="webhooks", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        raise SystemExit(2) from None
    except click.UsageError as exc:
        fail(exc.format_message(), 2)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        fail("aborted", 1)
    except WebhookError as exc:
        if debug:
            raise
        fail(str(exc), 1)
    except SQLAlchemyError as exc:
        if debug:
            raise
        fail(f"database error: {str(getattr(exc, 'orig', exc)).splitlines()[0]}", 1)
    except (KeyboardInterrupt, BrokenPipeError):
        raise SystemExit(130) from None
    except Exception as exc:
        if debug:
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
