"""List cursors: opaque, tamper-evident keyset positions.

A cursor is ``base64url(JSON of [list, time, id]) "." base64url(MAC)``, the MAC an HMAC-SHA256
(cut to 16 bytes) over the payload, the key's project and mode, under the schema's random
``cursor_key`` (made by migration 0013). A cursor changed by hand, made for another list, or
presented with another project's or mode's key fails the check and is a 400, never a page of
somebody else's rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime

from webhooks.api._errors import invalid
from webhooks.pages import Position, Scope

MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, scope: Scope, payload: bytes) -> bytes:
    message = f"{scope.project_id}\x00{scope.mode}\x00".encode() + payload
    return hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]


def encode_cursor(key: bytes, scope: Scope, list_name: str, position: Position) -> str:
    """The cursor for the page after ``position`` of ``list_name``."""
    at = position.created_at.isoformat() if position.created_at else None
    payload = json.dumps([list_name, at, position.id], separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(key, scope, payload))}"


def decode_cursor(key: bytes, scope: Scope, list_name: str, cursor: str) -> Position:
    """The position a cursor of this list and scope stands for; 400 for anything else."""
    bad = invalid(
        "cursor is not one this list gave out for this key; pass next_cursor from the "
        "previous page unchanged, or leave cursor out for the first page",
        param="cursor",
    )
    try:
        encoded, mac = cursor.split(".")
        payload, given = _unb64(encoded), _unb64(mac)
    except (ValueError, binascii.Error):
        raise bad from None
    if not hmac.compare_digest(_mac(key, scope, payload), given):
        raise bad
    try:
        name, at, position_id = json.loads(payload)
        moment = datetime.fromisoformat(at) if at is not None else None
    except (ValueError, TypeError):
        raise bad from None
    if name != list_name or not isinstance(position_id, str):
        raise bad
    return Position(created_at=moment, id=position_id)
