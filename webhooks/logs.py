"""Logging set-up for the processes we start: a stable event name plus ids, never a payload.

Records are logged as ``logger.info("attempt.recorded", extra={...ids})``; this formatter
appends the extras as ``key=value`` so a human can read them and grep can find them. Both
formatters mask the passwords of any URL a line quotes (`webhooks.display.mask_urls_in`).
"""

from __future__ import annotations

import logging
import sys

from webhooks.display import mask_urls_in

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """``time level logger event key=value …``."""

    def format(self, record: logging.LogRecord) -> str:
        """Format the record with its extra fields."""
        base = super().format(record)
        if not record.name.startswith("webhooks"):
            # Other libraries' extras (Celery's `data`) are theirs to show; their messages
            # may quote a broker or database URL, whose passwords are masked.
            return mask_urls_in(base)
        extras = " ".join(
            f"{key}={value}" for key, value in vars(record).items() if key not in _STANDARD
        )
        return mask_urls_in(f"{base} {extras}" if extras else base)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: int = logging.INFO, *, json_format: bool = False) -> None:
    """Send our logs to stderr, one line per event (JSON with `WEBHOOKS_LOG_FORMAT=json`)."""
    from webhooks.json_logs import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else KeyValueFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries()


def quiet_libraries() -> None:
    """httpx logs every request URL at INFO; a customer URL may carry a token in its query."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
