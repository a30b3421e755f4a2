"""Failure on demand: `webhooks dev`'s demo receiver answers by path, over real HTTP.

The demo receiver runs in a thread as `webhooks dev` runs it; requests are real HTTP; the
last two tests deliver to it through a real dispatcher and worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.engine import Engine

from tests.support.deliveries import attempts, deliveries, new_endpoint, publish_one
from tests.support.polling import wait_for
from webhooks.database import sql
from webhooks.dev.demo_receiver import MAX_SLOW_MS, DemoReceiver, failure_for_path
from webhooks.endpoints import disable_endpoint
from webhooks.settings import Settings
from webhooks.signing import generate_secret, sign

SECRET = generate_secret()
# Schedule 1s, 2s: a 503 is tried again within seconds; a wide window, so nothing exhausts.
STACK_ENV = {"WEBHOOKS_RETRY_SCHEDULE": "1s,2s", "WEBHOOKS_TIMEOUT": "2s"}


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[DemoReceiver, list[str]]]:
    lines: list[str] = []
    receiver = DemoReceiver(SECRET, echo=lines.append)
    receiver.start()
    yield receiver, lines
    receiver.stop()


def base(receiver: DemoReceiver) -> str:
    return receiver.url.removesuffix("/webhooks")


def post(url: str, *, signed: bool = True, timeout: float = 5.0) -> httpx.Response:
    body = b'{"id":"evt_1","type":"deployment.succeeded","data":{}}'
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": "evt_1"}
    if signed:
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign(SECRET, msg_id="evt_1", timestamp=timestamp, body=body)
    return httpx.post(url, content=body, headers=headers, timeout=timeout)


@pytest.mark.parametrize("code", [200, 404, 418, 500, 503])
def test_status_path_answers_that_status_whatever_the_signature(
    demo: tuple[DemoReceiver, list[str]], code: int
) -> None:
    receiver, _ = demo
    assert post(f"{base(receiver)}/status/{code}", signed=False).status_code == code
    assert post(f"{base(receiver)}/status/{code}").status_code == code


def test_slow_path_answers_200_after_the_delay(demo: tuple[DemoReceiver, list[str]]) -> None:
    receiver, _ = demo
    started = time.monotonic()
    response = post(f"{base(receiver)}/slow/600")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.6


def test_slow_path_is_capped_so_a_typo_cannot_pin_a_thread_for_hours() -> None:
    failure = failure_for_path("/slow/86400000")
    assert failure is not None and failure.delay_seconds == MAX_SLOW_MS / 1000


def _request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_hang_path_never_answers_and_lets_go_when_the_client_gives_up(
    demo: tuple[DemoReceiver, list[str]],
) -> None:
    receiver, _ = demo
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        post(f"{base(receiver)}/hang", timeout=1.0)
    assert time.monotonic() - started >= 1.0
    # The receiver notices the hang-up: no thread is left waiting for minutes.
    wait_for(lambda: not _request_threads(), timeout=5, what="the /hang handler to end")


def test_retry_after_path_answers_503_with_that_retry_after(
    demo: tuple[DemoReceiver, list[str]],
) -> None:
    receiver, _ = demo
    response = post(f"{base(receiver)}/retry-after/120")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "120"


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/status/abc", "/status/CODE"),
        ("/status/99", "200 to 599"),
        ("/slow/-5", "/slow/MS"),
        ("/retry-after/soon", "/retry-after/S"),
        ("/hang/5", "/hang takes no argument"),
    ],
)
def test_a_malformed_failure_path_answers_400_saying_what_it_takes(
    demo: tuple[DemoReceiver, list[str]], path: str, fragment: str
) -> None:
    receiver, _ = demo
    response = post(base(receiver) + path)
    assert response.status_code == 400
    assert fragment in response.text


def test_only_the_failure_paths_fail_on_demand_every_other_path_verifies_the_signature(
    demo: tuple[DemoReceiver, list[str]],
) -> None:
    receiver, _ = demo
    assert post(f"{base(receiver)}/status/503").status_code == 503
    assert post(receiver.url).status_code == 204
    assert post(receiver.url, signed=False).status_code == 401
    assert post(f"{base(receiver)}/statuses/503").status_code == 204
    assert post(f"{base(receiver)}/webhooks/status/503").status_code == 204


def test_the_printed_line_says_how_a_failure_path_answered(
    demo: tuple[DemoReceiver, list[str]],
) -> None:
    receiver, lines = demo
    post(f"{base(receiver)}/retry-after/7")
    post(receiver.url)
    assert lines[-2:] == [
        "demo receiver: evt_1 deployment.succeeded /retry-after/7: answering 503, retry-after: 7",
        "demo receiver: evt_1 deployment.succeeded signature valid: yes",
    ]


# -- through the real pipeline -----------------------------------------------------------------


@pytest.mark.usefixtures("stack")
def test_a_delivery_to_status_503_is_retried(
    demo: tuple[DemoReceiver, list[str]],
    engine: Engine,
    settings: Settings,
    project: str,
) -> None:
    receiver, _ = demo
    endpoint_id, _ = new_endpoint(engine, settings, f"{base(receiver)}/status/503", project)
    event_id = publish_one(engine, settings, project)
    tried = wait_for(
        lambda: (found := attempts(engine, settings, event_id)) and len(found) >= 2 and found,
        timeout=20,
        what="a second attempt",
    )
    assert [a.response_status for a in tried[:2]] == [503, 503]
    assert [a.number for a in tried[:2]] == [1, 2]
    (delivery,) = deliveries(engine, settings, event_id)
    assert delivery.state in {"pending", "delivering"}
    _disable(engine, settings, endpoint_id)


@pytest.mark.usefixtures("stack")
def test_a_delivery_to_retry_after_is_recorded_with_it_and_waits_that_long(
    demo: tuple[DemoReceiver, list[str]],
    engine: Engine,
    settings: Settings,
    project: str,
) -> None:
    receiver, _ = demo
    endpoint_id, _ = new_endpoint(engine, settings, f"{base(receiver)}/retry-after/2", project)
    event_id = publish_one(engine, settings, project)
    (first, *_) = wait_for(lambda: attempts(engine, settings, event_id), what="an attempt")
    assert first.response_status == 503
    with engine.connect() as conn:
        stored = conn.execute(
            sql(
                "SELECT response_headers ->> 'retry-after' FROM {s}.attempts "
                "WHERE event_id = :event_id AND number = 1",
                settings.db_schema,
            ),
            {"event_id": event_id},
        ).scalar_one()
    assert stored == "2"
    # The schedule says 1 s; Retry-After: 2 pushes the next attempt later.
    (delivery,) = deliveries(engine, settings, event_id)
    if delivery.attempt_count == 1:
        assert delivery.next_attempt_at is not None
        assert delivery.next_attempt_at - first.started_at >= timedelta(seconds=2)
    second = wait_for(
        lambda: (found := attempts(engine, settings, event_id)) and len(found) >= 2 and found[1],
        timeout=20,
        what="a second attempt",
    )
    assert second.started_at - first.started_at >= timedelta(seconds=2)
    _disable(engine, settings, endpoint_id)


def _disable(engine: Engine, settings: Settings, endpoint_id: str) -> None:
    # The delivery would go on failing every 2 s for the rest of the module.
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id, reason="test over")
