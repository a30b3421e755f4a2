"""`webhooks endpoint check`: four probes against real receivers over HTTP, via the real CLI.

One receiver verifies with the `standardwebhooks` library and dedupes by ``webhook-id``, as a
careful customer's would; `tests.receiver.Receiver` accepts everything, as most do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import standardwebhooks
from sqlalchemy.engine import Engine

from tests.helpers import count_rows, deliveries, new_endpoint, publish_one, run_cli
from tests.receiver import Receiver
from webhooks.endpoints import disable_endpoint
from webhooks.settings import Settings

PROBES = ["valid", "wrong_signature", "stale_timestamp", "duplicate_id"]


class CarefulReceiver:
    """Verifies every request with `standardwebhooks`, answers a repeated id 200 again.

    ``refuse_with`` is the status for a request that does not verify (401 by default).
    """

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.refuse_with: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = dict(self.headers.items())
                with owner._lock:
                    owner.requests.append((self.path, headers, body))
                    secret = owner.secrets.get(self.path, "")
                try:
                    standardwebhooks.Webhook(secret).verify(body, headers)
                except standardwebhooks.webhooks.WebhookVerificationError:
                    self._answer(owner.refuse_with.get(self.path, 401))
                    return
                with owner._lock:
                    seen = headers["webhook-id"] in owner._seen
                    owner._seen.add(headers["webhook-id"])
                self._answer(200 if seen else 204)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        return Handler


@pytest.fixture(scope="module")
def careful() -> Iterator[CarefulReceiver]:
    receiver = CarefulReceiver()
    yield receiver
    receiver.stop()


def careful_endpoint(
    careful: CarefulReceiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
    mode: str = "live",
) -> str:
    endpoint_id, secret = new_endpoint(engine, settings, careful.url(path), project, mode=mode)
    careful.secrets[path] = secret
    return endpoint_id


def check_json(env: dict[str, str], endpoint_id: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(env, "endpoint", "check", endpoint_id, "--json")
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def test_a_test_endpoint_is_probed_with_test_events(
    env: dict[str, str],
    careful: CarefulReceiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
) -> None:
    endpoint_id = careful_endpoint(careful, engine, settings, project, path, mode="test")

    code, report = check_json(env, endpoint_id)

    assert code == 0 and report["mode"] == "test"
    bodies = [json.loads(b) for p, _, b in careful.requests if p == path]
    assert len(bodies) == 4 and all(b["mode"] == "test" for b in bodies)


def test_a_receiver_that_verifies_signatures_passes_every_probe(
    env: dict[str, str],
    careful: CarefulReceiver,
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

    sent = [(h, b) for p, h, b in careful.requests if p == path]
    assert len(sent) == 4
    first, wrong, stale, again = sent
    envelope = json.loads(first[1])
    assert envelope["type"] == "webhook.check" and envelope["mode"] == "live"
    assert envelope["project_id"] == project and envelope["id"] == first[0]["webhook-id"]
    # The repeat is the first request again, as a retry is: same id and bytes, new signature.
    assert again[0]["webhook-id"] == first[0]["webhook-id"] and again[1] == first[1]
    # The forged ones have ids of their own: dedupe cannot hide a missing verification.
    assert len({h["webhook-id"] for h, _ in (first, wrong, stale)}) == 3
    # Each probe is stamped when it is sent: the stale one is ten minutes older than the probe
    # sent after it (against the first, a second boundary crossed in between made it 599).
    assert int(again[0]["webhook-timestamp"]) - int(stale[0]["webhook-timestamp"]) >= 600


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
    careful: CarefulReceiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
) -> None:
    endpoint_id = careful_endpoint(careful, engine, settings, project, path)
    careful.refuse_with[path] = 500
    code, report = check_json(env, endpoint_id)
    assert code == 0, report
    wrong = report["probes"][1]
    assert wrong["response_status"] == 500 and wrong["passed"] is True
    assert "answer 400 or 401" in wrong["hint"]


def test_probes_change_no_delivery_and_record_no_attempt(
    env: dict[str, str],
    careful: CarefulReceiver,
    engine: Engine,
    settings: Settings,
    project: str,
    path: str,
) -> None:
    endpoint_id = careful_endpoint(careful, engine, settings, project, path)
    with engine.begin() as conn:
        disable_endpoint(conn, settings, endpoint_id, reason="held for the test")
    event_id = publish_one(engine, settings, project)
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
