"""Standard Webhooks signatures (symmetric ``v1``: HMAC-SHA256).

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the header carries one
``v1,<base64>`` per active secret, space-separated, so receivers keep verifying while a secret
is rotated. Secrets are ``whsec_`` + base64 of 24 to 64 random bytes, the format every Standard
Webhooks library (and svix's) accepts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

from webhooks.errors import InvalidArgument

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret
SECRET_BYTES = 32


def generate_secret() -> str:
    """Return a new signing secret, ``whsec_`` followed by 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """Return the raw HMAC key of a ``whsec_`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidArgument("a signing secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError as exc:
        raise InvalidArgument("a signing secret must be whsec_ followed by base64") from exc
    if not 24 <= len(key) <= 64:
        raise InvalidArgument("a signing secret must hold 24 to 64 bytes")
    return key


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one signature, ``v1,<base64 HMAC-SHA256>``, of a message.

    Args:
        secret: a ``whsec_`` secret.
        msg_id: the ``webhook-id`` header value (our event id).
        timestamp: the ``webhook-timestamp`` header value, unix seconds.
        body: the exact bytes of the request body.
    """
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets_: Iterable[str], *, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value: one signature per active secret."""
    return " ".join(sign(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets_)
