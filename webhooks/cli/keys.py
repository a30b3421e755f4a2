"""``webhooks key …``: API keys for the HTTP API."""

from __future__ import annotations

import click

from webhooks import clock
from webhooks.cli.context import Context, json_option, mode_option, pass_context
from webhooks.cli.output import emit_json, emit_table, rfc3339
from webhooks.keys import (
    SCOPES,
    ApiKey,
    create_key,
    list_keys,
    revoke_key,
    rotate_key,
)
from webhooks.keys import parse_networks as parse_key_networks
from webhooks.modes import MODES
from webhooks.settings import parse_duration

__all__ = ["key_group"]


@click.group("key")
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
