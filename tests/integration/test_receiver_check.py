"""`webhooks endpoint check`: four probes against real receivers over HTTP, via the real CLI.

One receiver verifies with the `standardwebhooks` library and dedupes by ``webhook-id``, as a
careful customer's would; a plain `Receiver` accepts everything, as most do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import standardwebhooks
from sqlalchemy.engine import Engine

from tests.support.cli import run_cli
from tests.support.deliveries import count_rows, deliveries, new_endpoint, publish_expanded
from tests.support.receivers import Receiver, Reply, Request, Responder
from webhooks.endpoints import disable_endpoint
from webhooks.settings import Settings

PROBES = ["valid", "wrong_signature", "stale_timestamp", "duplicate_id"]


def verifying(secret: str, refuse_with: int) -> Responder:
    """A careful customer's handler: verify with `standardwebhooks`, answer a request that does
    not verify ``refuse_with``, a new id 204 and a repeated id 200 again."""
    seen: set[str] = set()
    lock = threading.Lock()

    def respond(request: Request) -> Reply:
        try:
            standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        except standardwebhooks.webhooks.WebhookVerificationError:
            return Reply(refuse_with, b"", {})
        with lock:
            again = request.webhook_id in seen
            seen.add(request.webhook_id)
        return Reply(200 if again else 204, b"", {})

    return respond


@pytest.fixture(scope="module")
def careful() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def careful_endpoint(
    careful: Receiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
    mode: str = "live",
    *,
    refuse_with: int = 401,
) -> str:
    endpoint_id, secret = new_endpoint(engine, settings, careful.url(path), project, mode=mode)
    careful.respond(path, verifying(secret, refuse_with))
    return endpoint_id


def check_json(env: dict[str, str], endpoint_id: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(env, "endpoint", "check", endpoint_id, "--json")
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def test_a_test_endpoint_is_probed_with_test_events(
    env: dict[str, str],
    careful: Receiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
) -> None:
    endpoint_id = careful_endpoint(careful, engine, settings, project, path, mode="test")

    code, report = check_json(env, endpoint_id)

    assert code == 0 and report["mode"] == "test"
    bodies = [json.loads(r.body) for r in careful.received(path)]
    assert len(bodies) == 4 and all(b["mode"] == "test" for b in bodies)


def test_a_receiver_that_verifies_signatures_passes_every_probe(
    env: dict[str, str],
    careful: Receiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
) -> None:
    endpoint_id = careful_endpoint(careful, engine, settings, project, path)
    code, report = check_json(env, endpoint_id)
    assert code == 0, report
    assert report["passed"] is True
    assert report["endpoint_id"] == endpoint_id and report["mode"] == "live"
    assert [p["probe"] for p in report["probes"]] == PROBES
    assert [p["response_status"] for p in report["probes"]] == [204, 401, 401, 200]
    assert [p["expected"] for p in report["probes"]] == ["2xx", "4xx", "4xx", "2xx"]
    assert all(p["passed"] and p["hint"] for p in report["probes"])

    sent = careful.received(path)
    assert len(sent) == 4
    first, wrong, stale, again = sent
    envelope = json.loads(first.body)
    assert envelope["type"] == "webhook.check" and envelope["mode"] == "live"
    assert envelope["project_id"] == project and envelope["id"] == first.webhook_id
    # The repeat is the first request again, as a retry is: same id and bytes, new signature.
    assert again.webhook_id == first.webhook_id and again.body == first.body
    # The forged ones have ids of their own: dedupe cannot hide a missing verification.
    assert len({r.webhook_id for r in (first, wrong, stale)}) == 3
    # Stale when it was sent (not against the first probe's second, which may be an earlier one).
    assert stale.arrived_at - int(stale.headers["webhook-timestamp"]) >= 600


def test_a_receiver_that_accepts_everything_fails_the_forged_probes_and_exits_1(
    env: dict[str, str], receiver: Receiver, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url("/anything"), project)
    code, report = check_json(env, endpoint_id)
    assert code == 1
    assert report["passed"] is False
    verdicts = {p["probe"]: p for p in report["probes"]}
    assert [p["passed"] for p in report["probes"]] == [True, False, False, True]
    assert "verify `webhook-signature`" in verdicts["wrong_signature"]["hint"]
    assert "Standard Webhooks" in verdicts["wrong_signature"]["hint"]
    assert "webhook-timestamp" in verdicts["stale_timestamp"]["hint"]

    text = run_cli(env, "endpoint", "check", endpoint_id)
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[1].split()[:4] == ["PROBE", "EXPECTED", "ANSWER", "RESULT"]
    wrong = next(line for line in lines if line.startswith("wrong_signature"))
    assert "FAIL" in wrong and "verify `webhook-signature`" in wrong
    assert lines[-1] == "2 of 4 probes were not answered as they should be"


def test_refusing_forgeries_with_5xx_passes_with_a_hint_to_answer_4xx(
    env: dict[str, str],
    careful: Receiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
) -> None:
    endpoint_id = careful_endpoint(careful, engine, settings, project, path, refuse_with=500)
    code, report = check_json(env, endpoint_id)
    assert code == 0, report
    wrong = report["probes"][1]
    assert wrong["response_status"] == 500 and wrong["passed"] is True
    assert "answer 400 or 401" in wrong["hint"]


def test_probes_change_no_delivery_and_record_no_attempt(
    env: dict[str, str],
    careful: Receiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
) -> None:
    endpoint_id = careful_endpoint(careful, engine, settings, project, path)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id, reason="held for the test")
    event_id = publish_expanded(engine, settings, project)
    before = deliveries(engine, settings, event_id)
    counts = {t: count_rows(engine, settings, t) for t in ("events", "deliveries", "attempts")}

    code, _ = check_json(env, endpoint_id)  # a disabled endpoint can be checked too

    assert code == 0
    assert deliveries(engine, settings, event_id) == before
    assert before[0].state == "pending" and before[0].attempt_count == 0
    assert {t: count_rows(engine, settings, t) for t in counts} == counts


def test_probes_obey_the_ssrf_guard_and_stop_when_nothing_answers(
    env: dict[str, str], receiver: Receiver, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url("/guarded"), project)
    code, report = check_json({**env, "WEBHOOKS_ALLOWED_NETWORKS": ""}, endpoint_id)
    assert code == 1
    first, *rest = report["probes"]
    assert first["error_kind"] == "blocked" and first["sent"] is True
    assert "WEBHOOKS_ALLOWED_NETWORKS" in first["hint"]
    assert all(p["sent"] is False and p["passed"] is False for p in rest)
    assert receiver.received("/guarded") == []


def test_probes_obey_the_deadline(
    env: dict[str, str], receiver: Receiver, engine: Engine, settings: Settings, project: str
) -> None:
    endpoint_id, _ = new_endpoint(engine, settings, receiver.url("/hang"), project)
    code, report = check_json({**env, "WEBHOOKS_TIMEOUT": "1s"}, endpoint_id)
    assert code == 1
    first = report["probes"][0]
    assert first["error_kind"] == "timeout"
    assert 900 <= first["duration_ms"] < 3000
    assert [p["sent"] for p in report["probes"]] == [True, False, False, False]


def test_checking_an_unknown_endpoint_is_one_error_line(env: dict[str, str]) -> None:
    result = run_cli(env, "endpoint", "check", "ep_nope")
    assert result.returncode == 1
    assert result.stderr.startswith("error: endpoint ep_nope does not exist")
    assert len(result.stderr.strip().splitlines()) == 1
