"""Live and test modes: the API's `sk_live_…` and `sk_test_…` keys, mirrored here.

Every endpoint, event and delivery has one, fixed at creation. Fan-out, replay and recovery
never cross modes; the database's foreign keys make it impossible (schema revision 0008).
"""

from __future__ import annotations

from typing import Literal

from webhooks.errors import InvalidArgument

Mode = Literal["live", "test"]
MODES: tuple[Mode, ...] = ("live", "test")
LIVE: Mode = "live"
TEST: Mode = "test"


def validate_mode(mode: str) -> Mode:
    """Return ``mode`` if it is ``live`` or ``test``."""
    if mode == "live":
        return LIVE
    if mode == "test":
        return TEST
    raise InvalidArgument(f"mode must be 'live' or 'test', not {mode!r}")


def validate_optional_mode(mode: str | None) -> Mode | None:
    """`validate_mode`, letting None (both modes) through."""
    return None if mode is None else validate_mode(mode)
