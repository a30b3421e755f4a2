"""Alembic migrations of the webhooks schema."""
