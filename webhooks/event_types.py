"""Event types and the filters endpoints subscribe with.

A filter is an exact type (``deployment.succeeded``) or ``prefix.*``, which matches every type
that starts with ``prefix.`` (``deployment.*`` matches ``deployment.build.failed``). An empty
filter list matches everything. The rule is written twice: `matches` in Python (the live
stream's type filter, and the tests' expectations) and `SUBSCRIBED_SQL`, which the statements
that route events into deliveries run (`expansion`, `recovery`);
tests/integration/test_expansion.py proves the two agree on random filters and types, as the
expansion runs the SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from webhooks.errors import InvalidEventType

_TYPE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_TYPE_LENGTH = 200

# `matches` in SQL: endpoint ``e`` subscribes to event ``ev`` (the aliases of the statements
# it is put in).
SUBSCRIBED_SQL = """(cardinality(e.event_types) = 0 OR ev.type = ANY (e.event_types)
       OR EXISTS (SELECT 1 FROM unnest(e.event_types) f
                  WHERE right(f, 2) = '.*' AND starts_with(ev.type, left(f, -1))))"""


def validate_event_type(event_type: str) -> str:
    """Return ``event_type`` if it is dot-separated words (``deployment.succeeded``)."""
    if not isinstance(event_type, str) or len(event_type) > MAX_TYPE_LENGTH:
        raise InvalidEventType(f"event type must be a string of at most {MAX_TYPE_LENGTH} chars")
    if not _TYPE.match(event_type):
        raise InvalidEventType(
            f"event type {event_type!r} is malformed; use dot-separated words such as "
            "deployment.succeeded"
        )
    return event_type


def validate_filters(filters: Iterable[str]) -> tuple[str, ...]:
    """Return the filters, each an exact type or ``prefix.*``, without duplicates."""
    result: list[str] = []
    for raw in filters:
        item = raw.strip()
        if not item:
            continue
        base = item[:-2] if item.endswith(".*") else item
        try:
            validate_event_type(base)
        except InvalidEventType as exc:
            raise InvalidEventType(
                f"event filter {item!r} is malformed; use an exact type (deployment.succeeded) "
                "or a prefix ending in .* (deployment.*)"
            ) from exc
        if item not in result:
            result.append(item)
    return tuple(result)


def matches(filters: Sequence[str], event_type: str) -> bool:
    """True when an endpoint with these filters subscribes to ``event_type``."""
    if not filters:
        return True
    return any(
        event_type.startswith(f[:-1]) if f.endswith(".*") else event_type == f for f in filters
    )
