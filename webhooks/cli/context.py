"""What the command groups share: one invocation's settings and engine, the common options,
and the reading of times given on the command line."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import click
from sqlalchemy.engine import Connection, Engine

from webhooks import clock
from webhooks.database import create_engine, translate_errors
from webhooks.errors import InvalidArgument
from webhooks.modes import MODES
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
