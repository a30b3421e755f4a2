"""Prometheus metrics of the workers and dispatchers (`prometheus-client`); the API process's
own are in `webhooks.api._observe`, served the same way.

Each process serves its own ``/metrics`` on `WEBHOOKS_METRICS_PORT` when that is set (give
each process on a machine its own port). Names and labels are few and fixed, so series stay
bounded whatever the traffic: no endpoint or event ids as labels (Flower and the database
answer per-delivery questions).

Workers:
- ``webhooks_attempts_total{outcome, error_kind, trigger, mode}``: attempts made; ``outcome``
  is ``succeeded``, ``retrying``, ``failed`` (exhausted) or ``skipped`` (stale claim, whose
  mode was not read: ``unknown``); ``mode`` is ``live`` or ``test``.
- ``webhooks_attempt_duration_seconds{outcome}``: histogram of attempt durations.

Dispatchers:
- ``webhooks_claimed_total``, ``webhooks_leases_expired_total``: claims made, and claims
  whose worker or message vanished (recovered by lease expiry).
- ``webhooks_backlog_due`` and ``webhooks_backlog_oldest_seconds``: deliveries due now on
  enabled endpoints and how long the oldest has waited: the first thing to alert on.
- ``webhooks_endpoints_disabled``, ``webhooks_breakers_open``: endpoint health.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from sqlalchemy.engine import Connection

from webhooks.database import sql
from webhooks.settings import Settings
from webhooks.stats import BACKLOG, ENDPOINTS

ATTEMPTS = Counter(
    "webhooks_attempts", "Delivery attempts made.", ["outcome", "error_kind", "trigger", "mode"]
)
ATTEMPT_SECONDS = Histogram(
    "webhooks_attempt_duration_seconds",
    "Duration of delivery attempts.",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
CLAIMED = Counter("webhooks_claimed", "Deliveries and replays claimed by dispatchers.")
LEASES_EXPIRED = Counter("webhooks_leases_expired", "Claims recovered after their lease ran out.")
RECLAIMED_WITHOUT_ATTEMPT = Counter(
    "webhooks_reclaimed_without_attempt",
    "Deliveries claimed again after a lease ran out with no attempt recorded under it.",
)
BACKLOG_DUE = Gauge("webhooks_backlog_due", "Deliveries due now on enabled endpoints.")
BACKLOG_OLDEST = Gauge(
    "webhooks_backlog_oldest_seconds", "How long the oldest due delivery has waited."
)
ENDPOINTS_DISABLED = Gauge("webhooks_endpoints_disabled", "Endpoints currently disabled.")
BREAKERS_OPEN = Gauge("webhooks_breakers_open", "Endpoints whose circuit breaker is open.")

_served = False


def serve(settings: Settings) -> None:
    """Serve ``/metrics`` on `WEBHOOKS_METRICS_PORT`, once per process, if it is set."""
    global _served
    if settings.metrics_port is not None and not _served:
        start_http_server(settings.metrics_port)
        _served = True


def observe_attempt(
    *,
    state: str | None,
    error_kind: str | None,
    trigger: str,
    seconds: float | None,
    mode: str = "unknown",
) -> None:
    """Count one run of the task (``state`` None: the claim was stale and nothing was sent)."""
    outcome = {"succeeded": "succeeded", "failed": "failed", None: "skipped"}.get(state, "retrying")
    ATTEMPTS.labels(outcome, error_kind or "none", trigger, mode).inc()
    if seconds is not None:
        ATTEMPT_SECONDS.labels(outcome).observe(seconds)


def refresh_gauges(conn: Connection, settings: Settings, now: datetime) -> None:
    """Read the backlog and endpoint health into the gauges (dispatchers, every few seconds)."""
    backlog = conn.execute(sql(BACKLOG, settings.db_schema), {"now": now}).one()
    BACKLOG_DUE.set(backlog.due)
    BACKLOG_OLDEST.set((now - backlog.oldest).total_seconds() if backlog.oldest else 0)
    endpoints = conn.execute(sql(ENDPOINTS, settings.db_schema), {"now": now}).one()
    ENDPOINTS_DISABLED.set(endpoints.disabled)
    BREAKERS_OPEN.set(endpoints.breakers_open)
