"""The naive baseline: the webhook sender most users write, kept as the yardstick.

A Celery task per event that does ``httpx.post(url, json=..., timeout=10)``, inserts an
attempt row with SQLAlchemy, and retries with ``self.retry(countdown=...)``; the event is
published with ``.delay()`` after its row commits. Its own Celery app and queue, run as a
real worker with the same pool and concurrency as ours:
``celery -A bench.naive worker -P threads -c N``.

What it does the usual way, on purpose: a new HTTP client per call (``httpx.post``), one
module-level engine with SQLAlchemy's default pool (5 + 10 overflow), Celery's defaults
(early ack, prefetch 4), the schedule in the broker (countdown), and the signature computed
inline. Configured from the environment at import, as such code usually is:
``DATABASE_URL``, ``CELERY_BROKER_URL``, ``BENCH_NAIVE_SCHEMA``, ``BENCH_NAIVE_QUEUE``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from webhooks.settings import normalize_database_url

SECRET = b"naive-bench-secret"

app = Celery("bench_naive", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_default_queue = os.environ.get("BENCH_NAIVE_QUEUE", "bench_naive")
app.conf.task_ignore_result = True


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "naive_events"
    __table_args__ = {"schema": "naive"}  # noqa: RUF012 (SQLAlchemy's declarative form)

    id: Mapped[str] = mapped_column(primary_key=True)
    url: Mapped[str]
    payload: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class Attempt(Base):
    __tablename__ = "naive_attempts"
    __table_args__ = {"schema": "naive"}  # noqa: RUF012

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(index=True)
    status: Mapped[int | None]
    error: Mapped[str | None]
    duration_ms: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


def make_engine() -> sa.Engine:
    """What the worker module builds at import: one engine, SQLAlchemy's default pool."""
    url = normalize_database_url(
        os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    schema = os.environ.get("BENCH_NAIVE_SCHEMA", "naive")
    return sa.create_engine(url).execution_options(schema_translate_map={"naive": schema})


engine = make_engine()


def create_tables(bind: sa.Engine, schema: str) -> None:
    """Create the baseline's schema and tables."""
    with bind.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    Base.metadata.create_all(bind.execution_options(schema_translate_map={"naive": schema}))


@app.task(bind=True, max_retries=8, name="bench.naive.deliver")
def deliver(self: Any, event_id: str, url: str, payload: dict[str, Any]) -> None:
    """POST the event, store the attempt, retry later on failure."""
    started = time.monotonic()
    body = json.dumps(payload, separators=(",", ":"))
    timestamp = str(int(time.time()))
    signature = base64.b64encode(
        hmac.new(SECRET, f"{event_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    ).decode()
    status: int | None = None
    error: str | None = None
    try:
        response = httpx.post(
            url,
            json=payload,
            timeout=10,
            headers={
                "webhook-id": event_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": f"v1,{signature}",
            },
        )
        status = response.status_code
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    with Session(engine) as session, session.begin():
        session.add(
            Attempt(
                event_id=event_id,
                status=status,
                error=error,
                duration_ms=round((time.monotonic() - started) * 1000),
                created_at=datetime.now(UTC),
            )
        )
    if status is None or not 200 <= status < 300:
        raise self.retry(countdown=60 * 2**self.request.retries)


def publish(bind: sa.Engine, *, event_id: str, url: str, payload: dict[str, Any]) -> float:
    """Insert the event, commit, then ``.delay()`` the task; return the commit time."""
    with Session(bind) as session, session.begin():
        session.add(
            Event(id=event_id, url=url, payload=json.dumps(payload), created_at=datetime.now(UTC))
        )
    committed = time.time()
    deliver.delay(event_id, url, payload)
    return committed
