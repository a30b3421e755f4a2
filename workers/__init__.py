"""Celery glue: the app (`celery -A workers`), the `webhooks.deliver` task and the dispatcher."""

from workers.app import app

__all__ = ["app"]
