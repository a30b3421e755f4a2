"""A worker's watch on its machine's clock: measured against the database's at start, then
every minute, with a warning logged when it is off by more than leases tolerate
(`webhooks.clock_offset`). Dispatchers do the same with their heartbeat.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from webhooks.clock_offset import CLOCK_CHECK_EVERY, warn_if_clock_offset

log = logging.getLogger("webhooks.worker")


class ClockWatch:
    """Measures at `start`, then every `CLOCK_CHECK_EVERY` until `stop`.

    A worker extends leases from its own clock, so a skewed worker is logged as a skewed
    dispatcher is. One short query a minute, on a daemon thread: tasks never wait for it.
    """

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, engine: Engine) -> None:
        """Measure once now, then every `CLOCK_CHECK_EVERY` until `stop`."""
        self.check(engine)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(engine,), name="clock-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """End the loop (it is a daemon thread: nothing waits for it)."""
        self._stopping.set()

    def check(self, engine: Engine) -> None:
        """Measure once; a database that cannot be reached is the tasks' problem, not ours."""
        try:
            with engine.connect() as conn:
                warn_if_clock_offset(conn, log)
        except SQLAlchemyError as exc:
            log.debug("clock.check_failed", extra={"error": str(exc).splitlines()[0]})

    def _loop(self, engine: Engine) -> None:
        while not self._stopping.wait(CLOCK_CHECK_EVERY.total_seconds()):
            self.check(engine)
