"""Signing secrets at rest: sealed with Fernet when `WEBHOOKS_SECRET_KEY` is set.

Fernet (from `cryptography`) is authenticated encryption (AES-128-CBC with HMAC-SHA256,
encrypt-then-MAC) with a versioned token format: a tampered or truncated value fails loudly
instead of signing with garbage, and `MultiFernet` lets operators rotate the key (the first
key seals, every listed key unseals). Without a key, secrets are stored as they are: fine for
development, and the README says to set one in production.

A sealed value is stored as ``fernet:<token>``; anything else is a plain ``whsec_`` secret,
so a deployment can turn the key on without a migration (old rows stay readable, new and
rotated secrets are sealed).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from webhooks.errors import ConfigurationError

PREFIX = "fernet:"


def parse_keys(text: str) -> tuple[str, ...]:
    """Validate `WEBHOOKS_SECRET_KEY`: comma-separated Fernet keys, the first one seals."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for key in keys:
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "WEBHOOKS_SECRET_KEY must be comma-separated Fernet keys (32 url-safe base64 "
                'bytes each); make one with: python -c "from cryptography.fernet import '
                'Fernet; print(Fernet.generate_key().decode())"'
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
