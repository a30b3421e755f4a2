"""The Celery app, configured for at-least-once delivery with Postgres holding the schedule.

Settings are read lazily (`add_defaults`), when Celery first needs its configuration, so
importing this module reads nothing from the environment.

Why these settings (see ../shared/research/celery-postgres-httpx.md):
- ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a message is acked after the attempt,
  and a worker holds one message per thread, not a hoard of them in memory.
- ``task_reject_on_worker_lost=False``: a killed worker's message is not requeued in a loop;
  the delivery's lease in Postgres brings it back exactly once.
- ``visibility_timeout`` well above the lease: Redis redelivers an unacked message only after
  the lease has already made the delivery due again, and the stale message is then skipped.
- No countdown/eta/retry anywhere: a retry is a row in Postgres with a time, never a message.
- Pool: ``threads``. The work is waiting on sockets and Postgres; threads share one httpcore
  connection pool (keep-alive, behind our guarded transport) and one engine per process,
  fork no copies of them, and need no monkey-patching (gevent) that psycopg and httpcore
  would have to be trusted with. The 10 s deadline is enforced by our own transport, so the
  prefork-only time limits are not needed.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery

from webhooks.errors import ConfigurationError
from webhooks.settings import Settings

app = Celery("workers", include=["workers.tasks"])


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery configuration for these settings."""
    visibility_timeout = max(300, int(settings.lease.total_seconds() * 4))
    transport = {"visibility_timeout": visibility_timeout}
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": visibility_timeout,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": 16,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": True,
        # Flower learns of each task from the worker's received/started/succeeded events; a
        # "sent" event too would be one more broker publish per claim for the dispatcher.
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "broker_heartbeat": 0,
    }
    if settings.broker_url.startswith("redis://"):
        # The same protocol and keys as kombu's, fewer objects per message (workers.broker).
        config["broker_transport"] = "workers.broker:Transport"
    return config


def _config_from_env() -> dict[str, Any]:
    # Read when a worker (or any `celery -A workers` command) starts: an invalid setting
    # stops it there with one line, instead of a traceback, or a failure in every task.
    try:
        settings = Settings.current()
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return celery_config(settings)


app.add_defaults(_config_from_env)
