"""The HTTP API served by `webhooks api` (real uvicorn) with a real worker and dispatcher: a
customer's script, with a key made by `webhooks key create`, creates an endpoint, publishes,
reads the attempts, replays, and watches the replay's attempt arrive on the stream it opened
before replaying."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.api import SseClient, bearer, served_api
from tests.support.cli import cli_ok
from tests.support.polling import wait_for
from tests.support.processes import Stack
from tests.support.receivers import Receiver

STACK_ENV = {"WEBHOOKS_API_ALLOW_HTTP": "true"}


@pytest.fixture(scope="module")
def api_url(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_api(env, tmp_path_factory.mktemp("api")) as url:
        yield url


def test_create_publish_read_attempts_and_replay_through_the_served_api(
    env: dict[str, str], stack: Stack, receiver: Receiver, api_url: str, project: str, path: str
) -> None:
    key = cli_ok(env, "key", "create", "--project", project, "--mode", "live", "--json")["key"]
    with httpx.Client(base_url=api_url, headers=bearer(key), timeout=10) as api:
        check_the_whole_path(
            api, receiver, event_path=path, stream=lambda **params: SseClient(api_url, key, params)
        )


def check_the_whole_path(
    api: httpx.Client,
    receiver: Receiver,
    *,
    event_path: str,
    stream: Callable[..., SseClient],
) -> None:
    path = event_path
    endpoint = api.post("/v1/webhook_endpoints", json={"url": receiver.url(path)})
    assert endpoint.status_code == 201, endpoint.text
    assert endpoint.headers["x-ratelimit-limit"] == "1000"
    event = api.post(
        "/v1/events",
        json={"type": "deployment.succeeded", "data": {"deployment_id": "dep_1"}},
        headers={"Idempotency-Key": path},
    )
    assert event.status_code == 201, event.text
    event_id = event.json()["id"]
    wait_for(lambda: receiver.received(path), what="the delivery to arrive")
    assert receiver.received(path)[0].headers["webhook-id"] == event_id

    def attempts(count: int) -> list[dict[str, object]] | None:
        page = api.get("/v1/webhook_attempts", params={"event_id": event_id}).json()
        return page["data"] if len(page["data"]) == count else None

    first = wait_for(lambda: attempts(1), what="the attempt to be listed")[0]
    assert (first["response_status"], first["trigger"], first["error_kind"]) == (
        200,
        "scheduled",
        None,
    )
    full = api.get(f"/v1/webhook_attempts/{first['id']}").json()
    assert full["request_headers"]["webhook-id"] == event_id

    # Connected before the replay: the replay's attempt must reach it, and only that one.
    watcher = stream(event_id=event_id)
    try:
        replayed = api.post(f"/v1/events/{event_id}/replay")
        assert replayed.status_code == 202 and replayed.json() == {"queued": 1}
        both = wait_for(lambda: attempts(2), what="the replay's attempt")
        assert [a["trigger"] for a in both] == ["replay", "scheduled"]
        streamed = wait_for(
            lambda: watcher.attempts_of(event_id), what="the replay's attempt on the stream"
        )
        assert [a["id"] for a in streamed] == [both[0]["id"]]
        assert streamed[0]["trigger"] == "replay"
    finally:
        watcher.close()
    assert len(receiver.received(path)) == 2
    shown = api.get(f"/v1/events/{event_id}").json()
    assert shown["deliveries"][0]["state"] == "succeeded"
    assert len(shown["deliveries"][0]["attempts"]) == 2
