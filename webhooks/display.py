"""What may be shown of a value: passwords masked in URLs, control characters escaped.

Two kinds of text reach an operator's terminal and log pipeline: our own settings, which
carry passwords (``DATABASE_URL``, ``CELERY_BROKER_URL``, ``FLOWER_BASIC_AUTH``), and what
receivers sent back, which is untrusted (a response body can carry terminal escape
sequences). Everything that prints either kind goes through these pure functions:

- `mask_url` / `mask_urls_in`: the password of ``scheme://user:password@host`` and the
  values of query parameters such as ``?password=`` become ``***``; a list of URLs joined by
  ``;`` (a Sentinel or failover broker URL) is masked URL by URL. Malformed URLs are masked
  too, never raised on: they are printed in error messages.
- `escape_controls` (for tables and one-line messages) and `escape_controls_in_json` (for
  ``--json`` output): C0 and C1 control characters (and DEL) can never reach a terminal raw.
"""

from __future__ import annotations

import re

__all__ = [
    "MASK",
    "escape_controls",
    "escape_controls_in_json",
    "mask_basic_auth",
    "mask_url",
    "mask_urls_in",
]

MASK = "***"

# A URL inside free text: a scheme, ://, and everything up to whitespace or a quote, less
# the punctuation of the sentence around it ("(tried redis://h/0).").
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]*[^\s\"'<>`.,;:)\]}]")
# Where one URL of a ;-separated list ends and the next begins.
_NEXT_URL = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.\-]*://)")
# Query parameters whose value is a credential (password, sslpassword, token, secret, …).
_SECRET_PARAM = re.compile(r"(?i)(pass|pwd|secret|token|auth|key)")
_QUERY_PARAM = re.compile(r"([^&;=#]+)=([^&;#]*)")
# C0 controls, DEL and C1 controls: what a terminal may act on.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# In JSON text C0 controls are already escaped (json.dumps always does); DEL and C1 are not.
_JSON_UNESCAPED_CONTROLS = re.compile(r"[\x7f-\x9f]")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def mask_url(url: str) -> str:
    """Return ``url`` with every password in it replaced by ``***``.

    Handles ``scheme://user:password@host`` (the password may itself contain ``@``),
    credential query parameters (``?password=…``, ``&sslpassword=…``, ``?token=…``) and
    several URLs joined by ``;`` (``sentinel://:pw@h1:26379;sentinel://:pw@h2:26379``).

    Args:
        url: a database or broker URL as configured, possibly malformed.
    """
    return ";".join(_mask_one(part) for part in _NEXT_URL.split(url))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The userinfo ends at the last @: a password may contain @, / or ? unencoded. A URL
    # with an @ further on (in its query) is masked past its host: too much, never too little.
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{MASK}{rest[at:]}"
    query_at = rest.find("?")
    if query_at >= 0:
        rest = rest[: query_at + 1] + _QUERY_PARAM.sub(_mask_param, rest[query_at + 1 :])
    return f"{scheme}://{rest}"


def _mask_param(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}={MASK}" if _SECRET_PARAM.search(name) else match.group(0)


def mask_urls_in(text: str) -> str:
    """Return ``text`` with `mask_url` applied to every URL found in it."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)


def mask_basic_auth(value: str) -> str:
    """``user:password`` pairs (comma-separated, as in ``FLOWER_BASIC_AUTH``), users kept."""
    return ",".join(
        f"{user}:{MASK}" if colon else MASK
        for user, colon, _ in (entry.partition(":") for entry in value.split(","))
    )


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _NAMED_ESCAPES.get(char) or f"\\x{ord(char):02x}"


def escape_controls(text: str) -> str:
    """Return ``text`` with each control character written as a visible escape.

    ``\\x1b[31m`` is shown as the six characters ``\\x1b[31m``, a newline as ``\\n``, the C1
    CSI ``\\x9b`` as ``\\x9b``: a receiver's body can neither recolour nor move the cursor
    of the terminal showing it, nor break a table's lines.
    """
    return _CONTROLS.sub(_escape, text)


def escape_controls_in_json(text: str) -> str:
    """Return JSON text with DEL and the C1 controls written as ``\\u007f`` … ``\\u009f``.

    ``json.dumps(..., ensure_ascii=False)`` escapes C0 controls but writes DEL and C1 raw.
    These characters can only occur inside JSON strings, where a ``\\u`` escape means the same
    character, so the value a script reads back is unchanged.
    """
    return _JSON_UNESCAPED_CONTROLS.sub(lambda match: f"\\u{ord(match.group(0)):04x}", text)
