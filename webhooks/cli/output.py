"""What the ``webhooks`` command prints: JSON, tables, times and ages, warnings and errors.

Every command prints through here, so a receiver's text (bodies, headers, descriptions)
never reaches a terminal raw: JSON has DEL and the C1 controls escaped, table cells every
control character. A moment is shown one way, RFC 3339 in UTC (`rfc3339`), a span of time
one way (`format_age`), and every table is laid out by `format_table`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NoReturn

import click

from webhooks.display import escape_controls, escape_controls_in_json, mask_urls_in
from webhooks.models import rfc3339

__all__ = [
    "emit_json",
    "emit_table",
    "fail",
    "format_age",
    "format_table",
    "rfc3339",
    "warn",
]


def emit_json(value: Any) -> None:
    # Receivers' text (bodies, headers) is in there: no raw C1 control reaches the terminal.
    click.echo(escape_controls_in_json(json.dumps(value, indent=2, ensure_ascii=False)))


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] = ()) -> list[str]:
    """Lay out rows in columns two spaces apart, under upper-cased headers if given.

    A cell of None is shown as ``-``; control characters in cells (a receiver's text) are
    shown as visible escapes, so no cell can break the table's lines.
    """
    cells = [[("-" if v is None else escape_controls(str(v))) for v in row] for row in rows]
    if headers:
        cells.insert(0, [h.upper() for h in headers])
    if not cells:
        return []
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    for line in format_table(rows, headers):
        click.echo(line)


def format_age(age: timedelta) -> str:
    """A span of time as an operator reads it: ``42.0s``, ``17.5m`` or ``5.2h``."""
    seconds = age.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def warn(message: str) -> None:
    """One ``warning:`` line on stderr: the command goes on."""
    click.echo(f"warning: {message}", err=True)


def fail(message: str, code: int) -> NoReturn:
    """One ``error:`` line on stderr, then exit with ``code``."""
    # One line, whatever the message quotes: no URL password, no raw control character.
    click.echo("error: " + escape_controls(mask_urls_in(" ".join(message.split()))), err=True)
    raise SystemExit(code)
