"""A Celery app with the worker settings we ship (`workers.app.celery_config`) and one no-op
task: the ceiling any Celery-based delivery can reach on this machine.

The task does the least a measurement needs: one Redis ``RPUSH`` of when it was sent and
when it ran. Run as ``celery -A bench.noop_app worker -P threads -c N`` with
``BENCH_NOOP_QUEUE`` set.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
from celery import Celery

from webhooks.settings import Settings
from workers.app import celery_config

app = Celery("bench_noop")


def _config() -> dict[str, Any]:
    config = celery_config(Settings.from_env())
    config["task_default_queue"] = os.environ.get("BENCH_NOOP_QUEUE", "bench_noop")
    return config


app.add_defaults(_config)

_local = threading.local()


def _redis() -> redis.Redis:
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = redis.Redis.from_url(
            os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
        )
    return client


@app.task(name="bench.noop", acks_late=True)
def noop(key: str, sent_at: float) -> None:
    """Record (sent, ran) and return."""
    _redis().rpush(key, f"{sent_at:.6f} {time.time():.6f}")
