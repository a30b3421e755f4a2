"""When to try again: pure backoff maths, no I/O.

After the n-th failed scheduled attempt the next one waits ``schedule[n-1]`` (the last step
repeats), stretched by up to ``jitter`` (never shortened), and pushed later, never earlier, by
a ``Retry-After`` on 429/503. No attempt is scheduled later than ``window`` after the first
attempt's start: past that the delivery has failed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from webhooks.settings import Settings

RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """The retry schedule of every delivery."""

    schedule: tuple[timedelta, ...]
    window: timedelta
    jitter: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """Build the policy from `WEBHOOKS_RETRY_*` settings."""
        return cls(settings.retry_schedule, settings.retry_window, settings.retry_jitter)

    def delay_after(self, failures: int) -> timedelta:
        """Return the un-jittered delay after the ``failures``-th failed attempt (1-based)."""
        return self.schedule[min(max(failures, 1), len(self.schedule)) - 1]


@dataclass(frozen=True)
class RetryDecision:
    """What happens after a failed scheduled attempt: try again at a time, or give up."""

    next_attempt_at: datetime | None

    @property
    def gives_up(self) -> bool:
        """True when the window is spent and the delivery is now `failed`."""
        return self.next_attempt_at is None


def decide_retry(
    policy: RetryPolicy,
    *,
    failures: int,
    first_attempt_at: datetime,
    now: datetime,
    retry_after: timedelta | None = None,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Decide when a delivery whose scheduled attempt just failed is tried again.

    Args:
        policy: the schedule, window and jitter.
        failures: how many scheduled attempts have failed so far, this one included.
        first_attempt_at: when the delivery's first attempt started (the window's origin).
        now: when this attempt finished.
        retry_after: the receiver's ``Retry-After``, already parsed, if it sent one on 429/503.
        rand: a source of uniform numbers in [0, 1), replaceable in tests.
    """
    window_end = first_attempt_at + policy.window
    nominal = now + policy.delay_after(failures)
    if nominal > window_end:
        return RetryDecision(None)
    jittered = nominal + policy.delay_after(failures) * (policy.jitter * rand())
    candidate = max(jittered, now + retry_after) if retry_after else jittered
    # The schedule said one more try fits in the window: jitter or Retry-After may delay it
    # to the window's end, never past it.
    return RetryDecision(min(candidate, window_end))


def parse_retry_after(
    status: int | None, value: str | None, *, now: datetime, limit: timedelta
) -> timedelta | None:
    """Parse a ``Retry-After`` header sent with 429 or 503: delay-seconds or an HTTP date.

    The value is untrusted input. Only ASCII digits (``"120"``) or an HTTP date are read;
    anything else (``"-1"``, ``"1e9"``, ``"²"``, garbage) is ignored, as if absent. The delay
    is clamped to ``limit`` (the retry window: no wait can usefully be longer), so a huge
    number or a date in the year 3000 can never overflow the schedule's arithmetic; a date
    in the past is no delay.

    Args:
        status: the response status; other statuses carry no ``Retry-After`` for us.
        value: the raw header value, if any.
        now: when the attempt ended (the origin of an HTTP date's delay).
        limit: the longest delay returned.

    Returns None when the status does not carry one, or the value is missing or malformed.
    """
    if status not in RETRY_AFTER_STATUSES or not value:
        return None
    value = value.strip(" \t")
    if _DELAY_SECONDS.fullmatch(value):
        # Compare digit counts before converting: int() of a 10,000-digit string is slow,
        # and timedelta() of a big one overflows.
        limit_seconds = int(limit.total_seconds())
        if len(value.lstrip("0")) > len(str(limit_seconds)):
            return limit
        return min(timedelta(seconds=int(value)), limit)
    when = _http_date(value)
    if when is None:
        return None
    if when <= now:
        return timedelta(0)
    return min(when - now, limit)


# RFC 9110, 10.2.3: ``delay-seconds = 1*DIGIT``, ASCII only (``str.isdigit`` also accepts
# "²" and other Unicode digits, which ``int()`` then refuses).
_DELAY_SECONDS = re.compile(r"[0-9]+", re.ASCII)
# An IMF-fixdate is 29 characters; the obsolete forms are shorter. Longer values are not
# dates, and are not worth parsing.
_MAX_HTTP_DATE_CHARS = 64


def _http_date(value: str) -> datetime | None:
    if len(value) > _MAX_HTTP_DATE_CHARS or not value.isascii():
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when
