"""``webhooks publish``, ``trigger``, ``event-types``, ``event show``, ``attempts``,
``deliveries`` and ``sandbox``: events in, and what became of them."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from webhooks.catalogue import CATALOGUE, example_data
from webhooks.cli.context import Context, json_option, mode_option, parse_time, pass_context
from webhooks.cli.output import emit_json, emit_table, rfc3339
from webhooks.errors import InvalidArgument, InvalidPayload
from webhooks.expansion import expand_event
from webhooks.history import (
    MAX_LISTED,
    get_deliveries,
    get_envelope,
    list_attempts,
    list_deliveries,
)
from webhooks.models import DELIVERY_STATES, Attempt
from webhooks.outbox import publish_event
from webhooks.sandbox import advance, trigger_event
from webhooks.settings import parse_duration

__all__ = [
    "attempts_command",
    "deliveries_command",
    "event_group",
    "event_types_command",
    "publish_command",
    "sandbox_group",
    "trigger_command",
]


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


@click.command("publish")
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


@click.command("event-types")
@json_option
def event_types_command(as_json: bool) -> None:
    """List the event types the Cloud API emits, each with an example of its data."""
    if as_json:
        emit_json([entry.to_json() for entry in CATALOGUE])
        return
    emit_table(["type", "description"], [(e.type, e.description) for e in CATALOGUE])


@click.group("event")
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


@click.command("attempts")
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


@click.command("deliveries")
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


@click.group("sandbox")
def sandbox_group() -> None:
    """Test-mode tools: fast-forward a project's test deliveries."""


@click.command("trigger")
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
