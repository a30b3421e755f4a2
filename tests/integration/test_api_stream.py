"""The attempt stream (``GET /v1/webhook_attempts/stream``): real worker and dispatcher, a real
`webhooks api` under uvicorn and real SSE clients (httpx streaming), and the process's tail
(one listener, fanned out in memory) on real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.api import bearer, new_key, served_api
from tests.support.deliveries import new_endpoint, publish_one
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.api import _tail
from webhooks.api._stream import attempt_frame
from webhooks.api._tail import SLOW_CLIENT, AttemptTail, End, StreamFilter
from webhooks.database import sql
from webhooks.settings import Settings, attempts_channel

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true", "WEBHOOKS_API_STREAM_KEEPALIVE": "0.5s"}


def attempts(engine: Engine, settings: Settings, event_id: str) -> list[Any]:
    """The event's stored attempts (id and status), oldest first."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sql(
                    "SELECT id, response_status FROM {s}.attempts WHERE event_id = :id ORDER BY id",
                    settings.db_schema,
                ),
                {"id": event_id},
            )
        )


class SseClient:
    """A client reading the stream in a thread: raw lines, and the events parsed from them."""

    def __init__(self, base_url: str, key: str, params: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self._client = httpx.Client(base_url=base_url, headers=bearer(key), timeout=30)
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


@pytest.fixture(scope="module")
def api(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    logdir = tmp_path_factory.mktemp("api")
    with served_api(env, logdir) as url:
        yield url, logdir / "api.log"


@pytest.fixture
def clients() -> Iterator[Callable[..., SseClient]]:
    opened: list[SseClient] = []

    def open_client(base_url: str, key: str, **params: str) -> SseClient:
        opened.append(SseClient(base_url, key, params))
        return opened[-1]

    yield open_client
    for client in opened:
        client.close()


def test_a_connected_client_receives_each_new_attempt_of_its_project_and_mode_only(
    engine: Engine,
    settings: Settings,
    stack: Stack,
    receiver: Receiver,
    api: tuple[str, Path],
    clients: Callable[..., SseClient],
    project: str,
    path: str,
) -> None:
    url, _ = api
    live = new_key(engine, settings, project, "live", scope="read")
    watcher = clients(url, live)
    deploys = clients(url, live, type="deployment.*")
    failures = clients(url, live, status="failed")
    elsewhere = clients(url, new_key(engine, settings, project + "x", "live"))
    other_mode = clients(url, new_key(engine, settings, project, "test"))
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url(path), project)
    other_endpoint = clients(url, live, endpoint_id="ep_another")
    # Published after every client was subscribed: each that matches must get it.
    event_id = publish_one(engine, settings, project)

    received = wait_for(lambda: watcher.attempts_of(event_id), what="the attempt on the stream")
    stored = attempts(engine, settings, event_id)
    assert len(received) == len(stored) == 1
    shown = received[0]
    assert shown["id"] == f"att_{stored[0].id}"
    assert (shown["object"], shown["endpoint_id"], shown["mode"]) == (
        "webhook_attempt",
        endpoint_id,
        "live",
    )
    assert (shown["response_status"], shown["trigger"], shown["number"]) == (200, "scheduled", 1)
    assert watcher.events[0]["id"] == shown["id"]
    wait_for(lambda: deploys.attempts_of(event_id), what="the type-filtered client")
    # The others had the time of two keep-alives to get it, and did not.
    for quiet in (failures, elsewhere, other_mode, other_endpoint):
        wait_for(lambda q=quiet: q.lines.count(": keep-alive") >= 2, what="keep-alives")
        assert quiet.events == [], quiet.events


def test_a_client_leaving_ends_its_subscription_on_the_server(
    engine: Engine, settings: Settings, api: tuple[str, Path], project: str
) -> None:
    url, log = api
    client = SseClient(url, new_key(engine, settings, project, "test"))
    before = log.read_text().count("api.stream.closed")
    client.close()
    wait_for(
        lambda: log.read_text().count("api.stream.closed") > before,
        what="the server to end the subscription",
    )


def test_unknown_or_malformed_filters_are_400_before_anything_is_streamed(
    engine: Engine, settings: Settings, api: tuple[str, Path], project: str
) -> None:
    url, _ = api
    key = new_key(engine, settings, project, "test")
    for params in ({"state": "failed"}, {"status": "maybe"}):
        response = httpx.get(
            url + "/v1/webhook_attempts/stream", params=params, headers=bearer(key), timeout=10
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request"
    assert httpx.get(url + "/v1/webhook_attempts/stream", timeout=10).status_code == 401


def test_recording_an_attempt_notifies_its_id_whether_it_succeeded_or_failed(
    engine: Engine,
    settings: Settings,
    stack: Stack,
    receiver: Receiver,
    project: str,
    path: str,
) -> None:
    url = sa.make_url(settings.database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as listener:
        listener.execute(f'LISTEN "{attempts_channel(settings.db_schema)}"')
        receiver.script(path, [500, 200])  # the locked path, then the one-statement success
        new_endpoint(engine, settings, receiver.url(path), project)
        event_id = publish_one(engine, settings, project)
        notified: list[str] = []
        while len(notified) < 2:
            got = [n.payload for n in listener.notifies(timeout=20, stop_after=1)]
            assert got, "no notification within 20 s"
            notified += got
    stored = attempts(engine, settings, event_id)
    assert [a.response_status for a in stored] == [500, 200]
    assert notified == [str(a.id) for a in stored]


# -- the tail in this process: one read per batch, bounded queues, polling -----------------------


def run_tail(
    tail: AttemptTail, filters: list[StreamFilter], act: Callable[[], Any], settle: float = 0.0
) -> list[list[bytes | End]]:
    """Subscribe ``filters``, call ``act`` (in a thread), and return what each queue held
    once ``act`` returned and the tail had ``settle`` seconds more."""

    async def main() -> list[list[bytes | End]]:
        subscriptions = [await tail.subscribe(f) for f in filters]
        await asyncio.to_thread(act)
        await asyncio.sleep(settle)
        tail.close()
        held = []
        for s in subscriptions:
            items = []
            while not s.queue.empty():
                items.append(s.queue.get_nowait())
            held.append(items)
        return held

    return asyncio.run(main())


def test_the_tail_reads_each_batch_once_whatever_the_number_of_clients(
    engine: Engine,
    settings: Settings,
    stack: Stack,
    receiver: Receiver,
    project: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[list[int]] = []
    real_read = _tail.read_attempts

    def counted(conn: Any, settings: Settings, ids: list[int]) -> Any:
        reads.append(list(ids))
        return real_read(conn, settings, ids)

    monkeypatch.setattr(_tail, "read_attempts", counted)
    new_endpoint(engine, settings, receiver.url(path), project)
    tail = AttemptTail(settings, engine, render=attempt_frame)
    event_ids: list[str] = []

    def publish_and_wait() -> None:
        event_ids.append(publish_one(engine, settings, project))
        wait_for(lambda: attempts(engine, settings, event_ids[0]), what="the attempt")

    held = run_tail(tail, [StreamFilter(project, "live")] * 20, publish_and_wait, settle=0.5)
    stored = attempts(engine, settings, event_ids[0])
    assert reads == [[stored[0].id]]
    for items in held:
        assert len(items) == 1 and f"att_{stored[0].id}".encode() in items[0]  # type: ignore[operator]


def test_a_client_too_far_behind_is_dropped_with_a_final_event(
    engine: Engine, settings: Settings, stack: Stack, receiver: Receiver, project: str, path: str
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)
    tail = AttemptTail(settings, engine, render=attempt_frame, queue_size=2)

    def publish_three() -> None:
        ids = [publish_one(engine, settings, project) for _ in range(3)]
        wait_for(lambda: all(attempts(engine, settings, i) for i in ids), what="3 attempts")

    [held] = run_tail(tail, [StreamFilter(project, "live")], publish_three, settle=0.5)
    assert held == [SLOW_CLIENT]
    assert tail.clients == 0


def test_with_notify_off_the_tail_polls_and_still_sends_each_attempt_once(
    engine: Engine, settings: Settings, stack: Stack, receiver: Receiver, project: str, path: str
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)
    tail = AttemptTail(dataclasses.replace(settings, notify=False), engine, render=attempt_frame)
    event_ids: list[str] = []

    def publish_two() -> None:
        event_ids.extend(publish_one(engine, settings, project) for _ in range(2))
        wait_for(lambda: all(attempts(engine, settings, i) for i in event_ids), what="attempts")

    [held] = run_tail(tail, [StreamFilter(project, "live")], publish_two, settle=2.5)
    ids = sorted(a.id for i in event_ids for a in attempts(engine, settings, i))
    assert [item for item in held if not isinstance(item, bytes)] == []
    assert sorted(int(bytes(f).split(b"\n")[0].removeprefix(b"id: att_")) for f in held) == ids
