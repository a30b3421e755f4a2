"""Signing secrets at rest: sealed with Fernet when `WEBHOOKS_SECRET_KEY` is set.

Fernet (from `cryptography`) is authenticated encryption (AES-128-CBC with HMAC-SHA256,
encrypt-then-MAC) with a versioned token format: a tampered or truncated value fails loudly
instead of signing with garbage, and `MultiFernet` lets operators rotate the key (the first
key seals, every listed key unseals). Without a key, secrets are stored as they are: fine for
development, and the README says to set one in production.

A sealed value is stored as ``fernet:<token>``; anything else is a plain ``whsec_`` secret,
so a deployment can turn the key on without a migration (old rows stay readable, new and
rotated secrets are sealed). `webhooks secrets reseal` (`reseal`) then seals the old rows, and
after a key change re-seals every secret under the new first key, so the old key can be
removed from the list.

Plain text at rest is allowed but never silent: every process that starts outside
`webhooks dev`, and `webhooks doctor`, prints `plaintext_warning` while no key is set.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from webhooks.errors import ConfigurationError

PREFIX = "fernet:"
GENERATE_KEY = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)
NO_KEY = (
    "WEBHOOKS_SECRET_KEY is not set, so there is no key to seal with; make one with: "
    + GENERATE_KEY
)


def parse_keys(text: str) -> tuple[str, ...]:
    """Validate `WEBHOOKS_SECRET_KEY`: comma-separated Fernet keys, the first one seals."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for key in keys:
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "WEBHOOKS_SECRET_KEY must be comma-separated Fernet keys (32 url-safe base64 "
                f"bytes each); make one with: {GENERATE_KEY}"
            ) from exc
    return keys


def seal(secret: str, keys: tuple[str, ...]) -> str:
    """Return the value to store for ``secret``."""
    if not keys:
        return secret
    return PREFIX + MultiFernet([Fernet(k) for k in keys]).encrypt(secret.encode()).decode()


def unseal(stored: str, keys: tuple[str, ...]) -> str:
    """Return the secret behind a stored value."""
    if not stored.startswith(PREFIX):
        return stored
    if not keys:
        raise ConfigurationError(
            "endpoint secrets are encrypted but WEBHOOKS_SECRET_KEY is not set; set it to the "
            "key they were sealed with"
        )
    try:
        token = stored[len(PREFIX) :].encode()
        return MultiFernet([Fernet(k) for k in keys]).decrypt(token).decode()
    except InvalidToken as exc:
        raise ConfigurationError(
            "an endpoint secret cannot be decrypted with WEBHOOKS_SECRET_KEY; list the old key "
            "after the new one while rotating"
        ) from exc


def reseal(stored: str, keys: tuple[str, ...]) -> str:
    """Return ``stored`` sealed under the first key: plain secrets sealed, sealed ones re-sealed.

    A value sealed under any listed key is decrypted and encrypted again with the first one
    (`MultiFernet.rotate`), so once every stored value has been through here the other keys
    can be removed from `WEBHOOKS_SECRET_KEY`.
    """
    if not keys:
        raise ConfigurationError(NO_KEY)
    if not stored.startswith(PREFIX):
        return seal(stored, keys)
    try:
        token = stored[len(PREFIX) :].encode()
        return PREFIX + MultiFernet([Fernet(k) for k in keys]).rotate(token).decode()
    except InvalidToken as exc:
        raise ConfigurationError(
            "a secret cannot be decrypted with any key in WEBHOOKS_SECRET_KEY; list the key it "
            "was sealed with after the new one, reseal, then remove the old key"
        ) from exc


def plaintext_warning(keys: tuple[str, ...], *, is_dev: bool) -> str | None:
    """The warning every process gives while secrets would be stored in plain text, or None.

    Args:
        keys: `Settings.secret_keys`.
        is_dev: `Settings.is_dev`: `webhooks dev` stores plain text on purpose, and quietly.
    """
    if keys or is_dev:
        return None
    return (
        "WEBHOOKS_SECRET_KEY is not set: endpoint signing secrets are stored in plain text in "
        f"the database; set it to a Fernet key ({GENERATE_KEY}), then run "
        "`webhooks secrets reseal` to seal the secrets already stored"
    )
