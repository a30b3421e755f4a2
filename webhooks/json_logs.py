"""JSON logs: one object per line, for log pipelines (``WEBHOOKS_LOG_FORMAT=json``).

Each record becomes ``{"ts", "level", "logger", "event", ...extras}``: ``event`` is the
message (our stable event names, such as ``attempt.recorded``), and the extras are what the
caller passed in ``extra={...}`` (ids, attempt numbers, states), found the same way as
`webhooks.logs.KeyValueFormatter` finds them. The formatter adds nothing of its own: callers
never pass a payload or a secret, and it never reaches for one; a URL quoted in a string
(a library's error message, a traceback) has its passwords masked. As in the key=value format,
other libraries' extras (Celery's ``data``) are left out; their message is kept.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from webhooks.display import mask_urls_in

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_RESERVED = ("ts", "level", "logger", "event")


class JsonFormatter(logging.Formatter):
    """``{"ts": "2026-11-28T14:02:11.123Z", "level": "info", "logger": …, "event": …, …}``."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if record.name.startswith("webhooks"):
            for key, value in vars(record).items():
                if key not in _STANDARD:
                    # An extra named like a base field keeps its value under another name.
                    fields[f"{key}_" if key in _RESERVED else key] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        # Masked value by value, before encoding: a password may contain a quote.
        masked = {key: _masked(value) for key, value in fields.items()}
        return json.dumps(masked, default=str, ensure_ascii=False, separators=(",", ":"))


def _masked(value: Any) -> Any:
    """The value with the passwords of the URLs it quotes masked (strings only)."""
    return mask_urls_in(value) if isinstance(value, str) else value
