"""Settings, read once from the environment (12-factor) into one frozen value.

Entry points (the CLI, the dispatcher, the API) call `Settings.from_env()` once and pass the
result down; code without an entry point of its own (`publish()` without ``settings=``, the
Celery worker's app, signal handlers and resources) shares `Settings.current()`, read once per
process. Nothing reads the environment at import time.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from urllib.parse import urlsplit

from webhooks.display import MASK, mask_basic_auth, mask_url
from webhooks.errors import ConfigurationError
from webhooks.sealing import parse_keys

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_SCHEDULE = "1m,5m,30m,2h,6h,12h"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# Postgres keeps identifiers to NAMEDATALEN - 1 bytes: a longer one is truncated (LISTEN) or
# refused (pg_notify), so every name built from the schema's must fit.
MAX_IDENTIFIER_BYTES = 63
# Postgres reserves schema names starting with pg_ for itself (CREATE SCHEMA refuses them).
_RESERVED_SCHEMA_PREFIX = "pg_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_duration(text: str, *, name: str = "duration") -> timedelta:
    """Parse ``"10s"``, ``"5m"``, ``"2h"``, ``"1.5s"`` or a bare number of seconds.

    Args:
        text: the value to parse.
        name: the setting's name, used in the error message.
    """
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError(
            f"{name}={text!r} is not a duration; write a number with s, m or h, e.g. 10s or 5m"
        )
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def parse_positive_duration(text: str, *, name: str) -> timedelta:
    """Parse a duration that must be longer than zero (a timeout, a window, a period)."""
    value = parse_duration(text, name=name)
    if value <= timedelta(0):
        raise ConfigurationError(f"{name}={text!r} must be longer than zero, e.g. 10s")
    return value


def parse_schedule(text: str, *, name: str = "WEBHOOKS_RETRY_SCHEDULE") -> tuple[timedelta, ...]:
    """Parse a comma-separated list of durations such as ``"1m,5m,30m"``."""
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise ConfigurationError(f"{name} is empty; give at least one delay, e.g. 1m,5m,30m")
    delays = tuple(parse_duration(p, name=name) for p in parts)
    if any(d <= timedelta(0) for d in delays):
        raise ConfigurationError(f"{name}={text!r} has a delay that is not positive")
    return delays


def parse_networks(text: str, *, name: str = "WEBHOOKS_ALLOWED_NETWORKS") -> tuple[IPNetwork, ...]:
    """Parse comma-separated CIDRs (``"127.0.0.0/8,::1/128"``)."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigurationError(
                f"{name} has {part!r}, which is not a CIDR network such as 127.0.0.0/8"
            ) from exc
    return tuple(networks)


def parse_bool(text: str, *, name: str) -> bool:
    """Parse true/false, yes/no, 1/0, on/off."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name}={text!r} is not a boolean; use true or false")


def parse_count(text: str, name: str) -> int:
    """Parse a positive whole number."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigurationError(f"{name}={text!r} must be a positive whole number")
    return int(text)


def parse_choice(text: str, choices: tuple[str, ...], name: str) -> str:
    """Return ``text`` lowercased if it is one of ``choices``."""
    value = text.strip().lower()
    if value not in choices:
        raise ConfigurationError(f"{name}={text!r} must be one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` per ``period`` (``WEBHOOKS_API_RATE_LIMIT``, e.g. ``1000/m``)."""

    requests: int
    period: timedelta


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")


def parse_rate_limit(text: str, *, name: str = "WEBHOOKS_API_RATE_LIMIT") -> RateLimit:
    """Parse ``"1000/m"`` (also ``/s`` and ``/h``)."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1:
        raise ConfigurationError(
            f"{name}={text!r} is not a rate; write requests per s, m or h, e.g. 1000/m"
        )
    return RateLimit(int(match.group(1)), timedelta(seconds=_UNIT_SECONDS[match.group(2)]))


def parse_public_url(text: str, *, name: str = "WEBHOOKS_PUBLIC_URL") -> str | None:
    """Where the API is reached from outside (``https://hooks.example.com``), without a trailing
    slash; None when unset."""
    value = text.strip().rstrip("/")
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{name}={text!r} must be the URL the API is reached at, such as "
            "https://hooks.example.com (a path prefix is allowed; no query or fragment)"
        )
    return value


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel the dispatchers of ``schema`` wait on."""
    return f"{schema}_due"


def attempts_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that says which attempts were just recorded (the payload is
    an attempt id); the HTTP API's attempt stream listens on it. Its suffix is as long as
    the dispatchers' channel's, so the longest schema name allowed stays the same."""
    return f"{schema}_att"


def schema_identifiers(schema: str) -> dict[str, str]:
    """Every Postgres identifier built from the schema name, by what it is used for."""
    return {
        "schema name": schema,
        "NOTIFY channel": notify_channel(schema),
        "attempts NOTIFY channel": attempts_channel(schema),
    }


def validate_schema_name(text: str) -> str:
    """Return ``text`` if it is a safe, unquoted Postgres schema name.

    The names built from it (`schema_identifiers`) are checked too: a valid schema name whose
    NOTIFY channel is over Postgres's identifier limit would make every publish fail.
    """
    if not _SCHEMA_NAME.match(text):
        raise ConfigurationError(
            f"WEBHOOKS_DB_SCHEMA={text!r} is not a valid schema name; "
            "use lowercase letters, digits and underscores"
        )
    if text.startswith(_RESERVED_SCHEMA_PREFIX):
        raise ConfigurationError(
            f"WEBHOOKS_DB_SCHEMA={text!r} starts with {_RESERVED_SCHEMA_PREFIX}, which Postgres "
            "reserves for its own schemas; choose another name, e.g. webhooks"
        )
    longest = MAX_IDENTIFIER_BYTES - max(
        len(name.encode()) - len(text) for name in schema_identifiers(text).values()
    )
    for use, name in schema_identifiers(text).items():
        if len(name.encode()) > MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(
                f"WEBHOOKS_DB_SCHEMA is {len(text)} characters long: its {use} {name!r} would "
                f"be {len(name.encode())} bytes, over Postgres's {MAX_IDENTIFIER_BYTES}; use a "
                f"schema name of at most {longest} characters"
            )
    return text


def normalize_database_url(url: str) -> str:
    """Accept a plain ``postgresql://`` URL and point SQLAlchemy at psycopg 3."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Durations are `timedelta`; see SPEC "Settings".

    Its ``repr`` masks what is secret (the passwords in the database and broker URLs,
    ``FLOWER_BASIC_AUTH``, the secret keys), so settings can be logged or shown in a traceback.
    """

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    broker_url: str = "redis://127.0.0.1:6379/0"
    db_schema: str = "webhooks"
    timeout: timedelta = timedelta(seconds=10)
    retry_schedule: tuple[timedelta, ...] = field(
        default_factory=lambda: parse_schedule(DEFAULT_SCHEDULE)
    )
    retry_window: timedelta = timedelta(hours=72)
    retry_jitter: float = 0.1
    lease: timedelta = timedelta(seconds=60)
    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_http: bool = False
    flower_basic_auth: str | None = None
    queue: str = "webhooks"
    dispatch_batch_size: int = 200
    # Attempts in flight below which a round's claims go one task each; above it they are
    # grouped (`messages.group_claims`), and from it (and at least
    # `workers.dispatcher.QUIET_IN_FLIGHT`) a dispatcher pauses between rounds
    # (`workers.dispatcher.GATHER`, which has the figures). Not the threads: a worker's
    # threads share one GIL and each message costs its consumer Celery's own few ms of it, so
    # singles saturate a worker long before its threads are busy. Raise it for workers spread
    # over many processes whose rounds are small. Then the most attempts one task carries.
    worker_slots: int = 1
    batch_max: int = 50
    # Events a recovery looks at per batch (one short transaction each), and how many of its
    # replays may wait to be sent before the next batch is queued.
    recovery_batch_size: int = 500
    dispatch_poll_interval: timedelta = timedelta(seconds=1)
    notify: bool = True
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    disable_after: timedelta = timedelta(days=5)
    endpoint_concurrency: int = 10
    breaker_threshold: int = 5
    breaker_cooldown: timedelta = timedelta(seconds=30)
    log_format: str = "text"
    metrics_port: int | None = None
    # The HTTP API: requests per live key, plain HTTP only in development or behind a proxy
    # that says the client used https.
    api_rate_limit: RateLimit = RateLimit(1000, timedelta(minutes=1))
    api_allow_http: bool = False
    api_trusted_proxies: tuple[IPNetwork, ...] = ()
    # The portal: how long a link (and the session it opens) lasts, and where `webhooks api`
    # is reached from outside, to make its links absolute (None: links are paths).
    portal_ttl: timedelta = timedelta(hours=1)
    public_url: str | None = None
    # How often an idle attempt stream (`GET /v1/webhook_attempts/stream`) sends a comment,
    # so proxies and clients can tell a quiet stream from a dead one.
    api_stream_keepalive: timedelta = timedelta(seconds=15)
    # Set by `webhooks dev` for its children: development defaults, and quiet about them.
    is_dev: bool = False

    def __repr__(self) -> str:
        # A field declared with repr=False is a secret: shown masked, whatever it holds.
        shown = {f.name: getattr(self, f.name) if f.repr else MASK for f in fields(self)}
        shown["database_url"] = mask_url(self.database_url)
        shown["broker_url"] = mask_url(self.broker_url)
        if self.flower_basic_auth is not None:
            shown["flower_basic_auth"] = mask_basic_auth(self.flower_basic_auth)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    @classmethod
    def current(cls) -> Settings:
        """This process's settings: read from ``os.environ`` once, and again only if the
        environment changed (so a long-lived process validates them once, not per call).

        For code without an entry point of its own to pass settings down: `publish()`
        without ``settings=``, the Celery worker's signal handlers and resources.
        """
        return _settings_of(tuple(sorted(os.environ.items())))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (``os.environ`` by default)."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            return env.get(name) or default

        timeout = parse_positive_duration(get("WEBHOOKS_TIMEOUT", "10s"), name="WEBHOOKS_TIMEOUT")
        lease = parse_positive_duration(get("WEBHOOKS_LEASE", "60s"), name="WEBHOOKS_LEASE")
        if lease <= timeout:
            raise ConfigurationError(
                f"WEBHOOKS_LEASE ({lease.total_seconds():g}s) must be longer than "
                f"WEBHOOKS_TIMEOUT ({timeout.total_seconds():g}s), or a slow attempt would be "
                "claimed twice"
            )
        jitter_text = get("WEBHOOKS_RETRY_JITTER", "0.1")
        try:
            jitter = float(jitter_text)
        except ValueError:
            jitter = -1.0
        if not 0.0 <= jitter <= 1.0:
            raise ConfigurationError(
                f"WEBHOOKS_RETRY_JITTER={jitter_text!r} must be a fraction between 0 and 1"
            )
        batch_size = parse_count(get("WEBHOOKS_DISPATCH_BATCH", "200"), "WEBHOOKS_DISPATCH_BATCH")
        return cls(
            database_url=normalize_database_url(get("DATABASE_URL", cls.database_url)),
            broker_url=get("CELERY_BROKER_URL", cls.broker_url),
            db_schema=validate_schema_name(get("WEBHOOKS_DB_SCHEMA", "webhooks")),
            timeout=timeout,
            retry_schedule=parse_schedule(get("WEBHOOKS_RETRY_SCHEDULE", DEFAULT_SCHEDULE)),
            retry_window=parse_positive_duration(
                get("WEBHOOKS_RETRY_WINDOW", "72h"), name="WEBHOOKS_RETRY_WINDOW"
            ),
            retry_jitter=jitter,
            lease=lease,
            allowed_networks=parse_networks(env.get("WEBHOOKS_ALLOWED_NETWORKS", "")),
            allow_http=parse_bool(env.get("WEBHOOKS_ALLOW_HTTP", ""), name="WEBHOOKS_ALLOW_HTTP"),
            flower_basic_auth=env.get("FLOWER_BASIC_AUTH") or None,
            queue=get("WEBHOOKS_QUEUE", "webhooks"),
            dispatch_batch_size=batch_size,
            worker_slots=parse_count(get("WEBHOOKS_WORKER_SLOTS", "1"), "WEBHOOKS_WORKER_SLOTS"),
            batch_max=parse_count(get("WEBHOOKS_BATCH_MAX", "50"), "WEBHOOKS_BATCH_MAX"),
            recovery_batch_size=parse_count(
                get("WEBHOOKS_RECOVERY_BATCH", "500"), "WEBHOOKS_RECOVERY_BATCH"
            ),
            dispatch_poll_interval=parse_positive_duration(
                get("WEBHOOKS_DISPATCH_POLL", "1s"), name="WEBHOOKS_DISPATCH_POLL"
            ),
            notify=parse_bool(env.get("WEBHOOKS_NOTIFY", "true"), name="WEBHOOKS_NOTIFY"),
            api_stream_keepalive=parse_positive_duration(
                get("WEBHOOKS_API_STREAM_KEEPALIVE", "15s"), name="WEBHOOKS_API_STREAM_KEEPALIVE"
            ),
            secret_keys=parse_keys(env.get("WEBHOOKS_SECRET_KEY", "")),
            disable_after=parse_positive_duration(
                get("WEBHOOKS_DISABLE_AFTER", "5d"), name="WEBHOOKS_DISABLE_AFTER"
            ),
            endpoint_concurrency=parse_count(
                get("WEBHOOKS_ENDPOINT_CONCURRENCY", "10"), "WEBHOOKS_ENDPOINT_CONCURRENCY"
            ),
            breaker_threshold=parse_count(
                get("WEBHOOKS_BREAKER_THRESHOLD", "5"), "WEBHOOKS_BREAKER_THRESHOLD"
            ),
            breaker_cooldown=parse_positive_duration(
                get("WEBHOOKS_BREAKER_COOLDOWN", "30s"), name="WEBHOOKS_BREAKER_COOLDOWN"
            ),
            metrics_port=(
                parse_count(env["WEBHOOKS_METRICS_PORT"], "WEBHOOKS_METRICS_PORT")
                if env.get("WEBHOOKS_METRICS_PORT")
                else None
            ),
            log_format=parse_choice(
                get("WEBHOOKS_LOG_FORMAT", "text"), ("text", "json"), "WEBHOOKS_LOG_FORMAT"
            ),
            is_dev=parse_bool(env.get("WEBHOOKS_DEV", ""), name="WEBHOOKS_DEV"),
            api_rate_limit=parse_rate_limit(get("WEBHOOKS_API_RATE_LIMIT", "1000/m")),
            api_allow_http=parse_bool(
                env.get("WEBHOOKS_API_ALLOW_HTTP", ""), name="WEBHOOKS_API_ALLOW_HTTP"
            ),
            api_trusted_proxies=parse_networks(
                env.get("WEBHOOKS_API_TRUSTED_PROXIES", ""), name="WEBHOOKS_API_TRUSTED_PROXIES"
            ),
            portal_ttl=parse_positive_duration(
                get("WEBHOOKS_PORTAL_TTL", "1h"), name="WEBHOOKS_PORTAL_TTL"
            ),
            public_url=parse_public_url(env.get("WEBHOOKS_PUBLIC_URL", "")),
        )


@functools.lru_cache(maxsize=1)
def _settings_of(environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(environment))
