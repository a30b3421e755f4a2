"""The ``webhooks`` admin command: endpoints, publish, inspect, replay, and the processes.

One module per command group (`endpoints`, `events`, `replay`, `keys`, `operations`), all
printing through `output`. Errors are one line on stderr starting ``error:``, exit 1 for bad
input or a failed operation, 2 for usage errors; a traceback only with ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
from sqlalchemy.exc import SQLAlchemyError

from webhooks import __version__
from webhooks.cli import endpoints, events, keys, operations, replay
from webhooks.cli.context import Context
from webhooks.cli.output import fail
from webhooks.errors import WebhookError

__all__ = ["cli", "main"]


# `--debug` is read by `main` from the arguments before click parses them (it decides how an
# error escaping click is shown), so the group does not take it as a parameter.
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug", is_flag=True, expose_value=False, help="Show tracebacks of unexpected errors."
)
@click.version_option(__version__, prog_name="webhooks")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Webhook delivery for the Cloud API: endpoints, events, attempts and replay."""
    ctx.obj = Context()
    ctx.call_on_close(ctx.obj.close)


for _command in (
    endpoints.endpoint_group,
    events.publish_command,
    events.trigger_command,
    events.event_types_command,
    events.event_group,
    events.attempts_command,
    events.deliveries_command,
    events.sandbox_group,
    replay.replay_command,
    replay.recover_group,
    keys.key_group,
    operations.migrate_command,
    operations.doctor_command,
    operations.stats_command,
    operations.prune_command,
    operations.secrets_group,
    operations.dispatcher_command,
    operations.api_command,
    operations.dev_command,
):
    cli.add_command(_command)


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
