"""Public identifiers made in Python: a prefix naming the kind (`evt_`, `ep_`, `rec_`, `key_`)
and a sortable body.

The body is a ULID-like 26-character Crockford base32 string: 48 bits of milliseconds then 80
random bits, so ids sort by creation time (handy in listings and in `--since` scans) and never
collide in practice across processes. Delivery ids (`dlv_` + 32 hex digits of a random UUID)
are made in SQL by the expansion (`expansion`), one per endpoint, and do not sort by time.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """Return a new id such as ``evt_01jf3m…``.

    Args:
        prefix: the kind of object, without the underscore (``"evt"``).
    """
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
