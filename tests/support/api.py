"""Helpers for the HTTP API's tests: keys made in the database, and `webhooks api` served by
real uvicorn in a subprocess (the port it chose read from its log)."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from tests.support.polling import wait_for
from tests.support.processes import BIN, spawn
from webhooks.keys import create_key, parse_networks
from webhooks.settings import Settings


def new_key(
    engine: Engine,
    settings: Settings,
    project: str,
    mode: str = "live",
    *,
    scope: str = "write",
    allow_ip: tuple[str, ...] = (),
    expires_in: timedelta | None = None,
) -> str:
    """Create an API key; return the key itself."""
    with engine.begin() as conn:
        _, key = create_key(
            conn,
            settings.db_schema,
            project_id=project,
            mode=mode,
            scope=scope,
            allowed_networks=parse_networks(allow_ip),
            expires_in=expires_in,
        )
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@contextmanager
def served_api(env: dict[str, str], logdir: Path) -> Iterator[str]:
    """`webhooks api --host 127.0.0.1 --port 0` as an operator starts it; yields its base URL."""
    log = logdir / "api.log"
    argv = [str(BIN / "webhooks"), "api", "--host", "127.0.0.1", "--port", "0"]
    process = spawn("api", argv, {**os.environ, **env}, log)
    try:
        port = wait_for(
            lambda: (m := _LISTENING.search(log.read_text())) and m.group(1),
            timeout=30,
            what=f"webhooks api to listen (log: {log})",
        )
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/v1/openapi.json", timeout=5).status_code == 200
        yield base
    finally:
        process.stop()


class SseClient:
    """A client reading the stream in a thread: raw lines, and the events parsed from them."""

    def __init__(
        self,
        base_url: str,
        key: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self._client = httpx.Client(
            base_url=base_url, headers={**bearer(key), **(headers or {})}, timeout=30
        )
        self._params = params or {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_for(lambda: ": subscribed" in self.lines, what="the stream to be subscribed")

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            with self._client.stream(
                "GET", "/v1/webhook_attempts/stream", params=self._params
            ) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    self.lines.append(line)
                    if not line:
                        if "data" in fields:
                            self.events.append(
                                {
                                    "event": fields.get("event"),
                                    "id": fields.get("id"),
                                    "data": json.loads(fields["data"]),
                                }
                            )
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        fields[name] = value
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.StreamClosed):
            pass

    def attempts_of(self, event_id: str) -> list[dict[str, Any]]:
        return [
            e["data"]
            for e in self.events
            if e["event"] == "webhook_attempt" and e["data"]["event_id"] == event_id
        ]

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=10)
