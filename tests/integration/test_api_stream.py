"""The attempt stream (``GET /v1/webhook_attempts/stream``): real worker and dispatcher, a real
`webhooks api` under uvicorn and real SSE clients (httpx streaming), and the process's tail
(one listener, fanned out in memory) on real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.api import SseClient, bearer, new_key, served_api
from tests.support.deliveries import new_endpoint, publish_one
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver
from webhooks.api import _stream, _tail
from webhooks.api._stream import attempt_frame, frame_id
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

    def open_client(
        base_url: str, key: str, headers: dict[str, str] | None = None, **params: str
    ) -> SseClient:
        opened.append(SseClient(base_url, key, params, headers))
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


def test_a_stream_carries_the_guards_headers(
    engine: Engine, settings: Settings, api: tuple[str, Path], project: str
) -> None:
    url, _ = api
    key = new_key(engine, settings, project, "live")
    with (
        httpx.Client(base_url=url, headers=bearer(key), timeout=30) as client,
        client.stream("GET", "/v1/webhook_attempts/stream") as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-content-type-options"] == "nosniff"
        assert stream.headers["cache-control"] == "no-store"
        assert int(stream.headers["x-ratelimit-limit"]) == settings.api_rate_limit.requests


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


def test_a_notification_wakes_the_tail_whatever_its_payload(
    engine: Engine,
    settings: Settings,
    stack: Stack,
    receiver: Receiver,
    project: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker may announce a batch with one notification and any payload: the tail
    reads what is new above the last id it saw. Its once-a-second poll is put off here (to
    a minute), so only the notification can have woken it."""
    new_endpoint(engine, settings, receiver.url(path), project)
    event_id = publish_one(engine, settings, project)
    [recorded] = wait_for(lambda: attempts(engine, settings, event_id), what="an attempt")
    monkeypatch.setattr(_tail, "POLL_SECONDS", 60.0)
    tail = AttemptTail(settings, engine, render=attempt_frame)
    copies: list[int] = []

    def record_two_and_notify_once() -> None:
        with engine.begin() as conn:
            copies.extend(copy_attempt(conn, settings, recorded.id) for _ in range(2))
            conn.execute(
                sa.text("SELECT pg_notify(:channel, 'a batch')"),
                {"channel": attempts_channel(settings.db_schema)},
            )

    async def main() -> list[bytes | End]:
        subscription = await tail.subscribe(StreamFilter(project, "live"))
        await asyncio.to_thread(record_two_and_notify_once)
        got = [await asyncio.wait_for(subscription.queue.get(), 20) for _ in copies]
        tail.close()
        return got

    held = asyncio.run(main())
    assert [frame_id(f) for f in held if isinstance(f, bytes)] == copies


def copy_attempt(conn: Any, settings: Settings, attempt_id: int) -> int:
    """A new attempt row like ``attempt_id`` (as a worker records one, without notifying)."""
    columns = (
        "delivery_id, event_id, endpoint_id, project_id, mode, number, trigger, started_at, "
        "duration_ms, request_url, request_headers, response_status, response_headers, "
        "response_body, error_kind, error_message"
    )
    return int(
        conn.execute(
            sql(
                f"INSERT INTO {{s}}.attempts ({columns}) SELECT {columns} FROM {{s}}.attempts "
                "WHERE id = :id RETURNING id",
                settings.db_schema,
            ),
            {"id": attempt_id},
        ).scalar_one()
    )


def test_a_client_reconnecting_with_last_event_id_gets_what_it_missed_then_the_live_tail(
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
    new_endpoint(engine, settings, receiver.url(path), project)
    new_endpoint(engine, settings, receiver.url(path), project + "x")
    events = [publish_one(engine, settings, project) for _ in range(3)]
    publish_one(engine, settings, project + "x")  # another project's: never sent
    ids = recorded_ids(engine, settings, events)
    key = new_key(engine, settings, project, "live", scope="read")

    client = clients(url, key, headers={"Last-Event-ID": f"att_{ids[0]}"})
    wait_for(lambda: len(client.events) >= 2, what="the missed attempts")
    later = publish_one(engine, settings, project)
    wait_for(lambda: client.attempts_of(later), what="the live attempt after them")
    [live] = attempts(engine, settings, later)
    assert [e["id"] for e in client.events] == [f"att_{i}" for i in [*ids[1:], live.id]]


def recorded_ids(engine: Engine, settings: Settings, events: list[str]) -> list[int]:
    """The ids of the events' attempts (one each), once all are recorded, in id order."""

    def all_recorded() -> list[int]:
        found = [a.id for e in events for a in attempts(engine, settings, e)]
        return sorted(found) if len(found) == len(events) else []

    return wait_for(all_recorded, what="the attempts")


def test_a_reconnection_gets_at_most_a_bounded_number_then_where_to_resume(
    engine: Engine,
    settings: Settings,
    stack: Stack,
    receiver: Receiver,
    project: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new_endpoint(engine, settings, receiver.url(path), project)
    ids = recorded_ids(engine, settings, [publish_one(engine, settings, project) for _ in range(3)])
    monkeypatch.setattr(_stream, "BACKFILL", 2)
    tail = AttemptTail(settings, engine, render=attempt_frame)
    scope = StreamFilter(project, "live")

    first = _stream.read_missed(tail, scope, ids[0] - 1)
    assert [frame_id(f) for f in first.frames] == ids[:2]
    assert first.resume_after == ids[1]
    rest = _stream.read_missed(tail, scope, ids[1])
    assert [frame_id(f) for f in rest.frames] == ids[2:]
    assert rest.resume_after is None


def test_a_malformed_last_event_id_is_400(
    engine: Engine, settings: Settings, api: tuple[str, Path], project: str
) -> None:
    url, _ = api
    key = new_key(engine, settings, project, "test")
    response = httpx.get(
        url + "/v1/webhook_attempts/stream",
        headers={**bearer(key), "Last-Event-ID": "evt_123"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "Last-Event-ID"
