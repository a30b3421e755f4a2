"""Per-process resources of a worker: settings, one engine, one HTTP sender.

Created on first use in the process that uses them, never inherited across a fork (a shared
TLS connection or pooled socket in two processes corrupts both), and shared by the threads of
the pool (the engine pool and the httpcore connection pool are thread-safe).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from webhooks.database import create_engine
from webhooks.delivery import ShardedSender
from webhooks.settings import Settings

# Threads that make a batch's attempts at once (`attempts.run_attempts`). They wait on
# sockets; each black-holed endpoint holds one for its deadline, and the per-endpoint cap
# bounds how many such attempts are in flight, so this many leave room for the rest.
ATTEMPT_THREADS = 256
# HTTP connection pools the attempt threads (and the pool's own threads) are spread over
# (`delivery.ShardedSender`).
SENDER_SHARDS = 8


@dataclass(frozen=True)
class WorkerResources:
    """What every attempt in this process shares."""

    settings: Settings
    engine: Engine
    sender: ShardedSender
    attempt_pool: ThreadPoolExecutor

    def close(self) -> None:
        """Close the attempt threads, the HTTP connections and the database pool."""
        self.attempt_pool.shutdown(wait=False, cancel_futures=True)
        self.sender.close()
        self.engine.dispose()


_lock = threading.Lock()
_resources: WorkerResources | None = None


def get_resources() -> WorkerResources:
    """Return this process's resources, creating them on first use."""
    global _resources
    with _lock:
        if _resources is None:
            settings = Settings.current()
            _resources = WorkerResources(
                settings=settings,
                engine=create_engine(settings, pool_size=20, pre_ping=False),
                sender=ShardedSender(
                    SENDER_SHARDS,
                    timeout=settings.timeout,
                    allowed_networks=settings.allowed_networks,
                    # A connection for each attempt that may be on the wire at once.
                    max_connections=(ATTEMPT_THREADS + 32) // SENDER_SHARDS + 1,
                ),
                attempt_pool=ThreadPoolExecutor(ATTEMPT_THREADS, thread_name_prefix="attempt"),
            )
        return _resources


def close_resources() -> None:
    """Release this process's resources (worker shutdown)."""
    global _resources
    with _lock:
        if _resources is not None:
            _resources.close()
            _resources = None


def _forget_after_fork() -> None:
    # The child must not touch the parent's sockets: drop the references, build anew.
    global _resources, _lock
    _resources = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
