"""The one task: ``webhooks.deliver``, one attempt or a batch of them.

Its arguments are ids only (per attempt: delivery, event, endpoint, attempt number, claim
token, trigger; `webhooks.messages`), so Flower shows which deliveries it carries and never a
payload or a secret. Its result is the outcome: for one attempt, status or error kind,
duration and the state it left; for a batch, per attempt in order, ``"<status or error kind>
<duration>ms"``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, worker_process_init, worker_ready, worker_shutdown

from webhooks import metrics
from webhooks.attempts import run_attempts
from webhooks.json_logs import JsonFormatter
from webhooks.logs import KeyValueFormatter, quiet_libraries
from webhooks.messages import TASK_NAME, claims_from_kwargs
from webhooks.sealing import plaintext_warning
from webhooks.settings import Settings
from workers.app import app
from workers.clock_watch import ClockWatch
from workers.heap import freeze_startup_objects
from workers.resources import close_resources, get_resources

log = logging.getLogger("webhooks.worker")
_clock_watch = ClockWatch()


# A batch's result is one short string per attempt (`AttemptReport.brief`, under 24
# characters): 50 of them fit in Celery's representation of a result for events and Flower.
RESULT_REPR_MAXSIZE = 2048


@app.task(name=TASK_NAME, acks_late=True, resultrepr_maxsize=RESULT_REPR_MAXSIZE)
def deliver(**message: Any) -> dict[str, Any]:
    """Make the attempts of claimed deliveries and record them.

    Never retried by Celery: Postgres holds the schedule (SPEC, "Moving parts").
    """
    resources = get_resources()
    claims = claims_from_kwargs(message)
    reports = run_attempts(
        resources.engine, resources.sender, resources.settings, claims, resources.attempt_pool
    )
    if len(reports) == 1:
        return reports[0].to_json()
    return {"attempts": [report.brief() for report in reports]}


@worker_process_init.connect
def _open_resources(**_: Any) -> None:
    # Build the engine and HTTP client before the first message, not during it: the first
    # attempts would otherwise start late and bunch up with later ones.
    get_resources()


@worker_ready.connect
def _ready(**_: Any) -> None:
    # The threads pool runs tasks in this process. (A prefork pool's children would each need
    # prometheus-client's multiprocess mode; only this process serves the port.)
    resources = get_resources()
    warning = plaintext_warning(resources.settings.secret_keys, is_dev=resources.settings.is_dev)
    if warning:
        log.warning("secrets.stored_in_plain_text", extra={"detail": warning})
    _clock_watch.start(resources.engine)
    metrics.serve(resources.settings)
    freeze_startup_objects()


@worker_shutdown.connect
def _close_on_shutdown(**_: Any) -> None:
    _clock_watch.stop()
    close_resources()


@after_setup_logger.connect
def _log_ids(logger: logging.Logger, **_: Any) -> None:
    # Celery's formatter drops `extra`; ours appends the ids (delivery_id=… attempt=…), or
    # writes JSON lines with WEBHOOKS_LOG_FORMAT=json.
    json_format = Settings.current().log_format == "json"
    for handler in logger.handlers:
        fmt = handler.formatter._fmt if handler.formatter else None
        handler.setFormatter(JsonFormatter() if json_format else KeyValueFormatter(fmt))
    quiet_libraries()
    # One INFO line per attempt is ours (`attempt.recorded`: ids, status, error kind,
    # duration, state). Celery's "received" and "succeeded in" lines per task said it again,
    # the first on the consumer thread every message passes through; failures are still
    # logged, at WARNING and above.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
