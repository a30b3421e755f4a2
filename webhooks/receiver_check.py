"""The receiver check: probe an endpoint the way an attacker or a bad day would.

Most receivers never verify signatures. `check_endpoint` sends four ``webhook.check``
requests, one after the other, through the same guarded sender as every delivery (SSRF
guard, total deadline, no redirects):

1. ``valid``: correctly signed, as a real event would be: it should get a 2xx;
2. ``wrong_signature``: signed with a secret that is not the endpoint's: anything but 2xx
   (4xx preferred: a 5xx asks the sender to retry a request that will never verify);
3. ``stale_timestamp``: correctly signed, but ``webhook-timestamp`` is 10 minutes old, as a
   captured request replayed later would be: anything but 2xx, 4xx preferred;
4. ``duplicate_id``: probe 1 again, byte for byte, with a fresh timestamp and signature,
   exactly what a retry or a replay looks like: it should get a 2xx.

The forged probes carry ids of their own, so a receiver that looks up the id before it
verifies cannot pass them by recognising probe 1. Probes are not deliveries: nothing is
read from or written to the outbox, no delivery changes state, no attempt is recorded.
Whether an answer is right is decided in one place, `judge_probe`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from webhooks import clock
from webhooks.attempts import refuse_plain_http, webhook_headers
from webhooks.delivery import DeliveryOutcome, HttpSender
from webhooks.endpoints import signing_secrets
from webhooks.ids import new_id
from webhooks.models import Endpoint, rfc3339
from webhooks.modes import validate_mode
from webhooks.outbox import build_envelope
from webhooks.settings import Settings
from webhooks.signing import generate_secret, signature_header

__all__ = [
    "CHECK_EVENT_TYPE",
    "PROBES",
    "ProbeResult",
    "ReceiverCheck",
    "Verdict",
    "check_endpoint",
    "judge_probe",
]

log = logging.getLogger("webhooks.receiver_check")

CHECK_EVENT_TYPE = "webhook.check"
# Standard Webhooks libraries refuse timestamps more than 5 minutes away; twice that is
# clearly stale for every one of them.
STALE_BY = timedelta(minutes=10)

# Probe name -> what is sent, in the order they are sent.
PROBES = {
    "valid": "a correctly signed webhook.check event",
    "wrong_signature": "the same with a wrong signature",
    "stale_timestamp": "correctly signed, timestamp 10 minutes old",
    "duplicate_id": "the first webhook-id again, freshly signed",
}
_FORGED = frozenset({"wrong_signature", "stale_timestamp"})


@dataclass(frozen=True)
class Verdict:
    """Whether a probe was answered as it should be, and a one-line hint."""

    is_passed: bool
    hint: str


def judge_probe(probe: str, outcome: DeliveryOutcome | None) -> Verdict:
    """Decide whether the receiver's answer to one probe is right.

    Args:
        probe: one of `PROBES`.
        outcome: what the request produced; None when it was not sent (the endpoint did
            not answer the first probe at all).
    """
    if outcome is None:
        return Verdict(False, "not sent: the endpoint gave no answer to the first probe")
    status = outcome.status
    if status is None:
        reason = " ".join((outcome.error_message or "").split()) or "no detail"
        return Verdict(False, f"no answer ({outcome.error_kind}): {reason}")
    is_accepted = 200 <= status < 300
    if probe in _FORGED:
        return _judge_forged(probe, status, is_accepted)
    if outcome.is_success:
        if probe == "duplicate_id":
            return Verdict(True, "accepts a repeated webhook-id, as retries and replays send")
        return Verdict(True, "accepts a correctly signed event")
    if is_accepted:
        return Verdict(
            False,
            f"answered {status} but the response did not finish in time ({outcome.error_kind}): "
            "answer as soon as the event is stored, within 10 s",
        )
    if probe == "duplicate_id":
        return Verdict(
            False,
            f"answered {status} to a webhook-id it had seen: retries and replays reuse the id, "
            "so answer 2xx again (and skip the work)",
        )
    if status in (401, 403):
        return Verdict(
            False,
            f"answered {status} to a correctly signed event: verify with this endpoint's "
            "current secret over the raw body bytes, as received",
        )
    if 300 <= status < 400:
        return Verdict(False, f"answered {status}: redirects are not followed; use the final URL")
    return Verdict(False, f"answered {status}: answer 2xx once the event is stored")


def _judge_forged(probe: str, status: int, is_accepted: bool) -> Verdict:
    if is_accepted:
        if probe == "wrong_signature":
            return Verdict(
                False,
                "your endpoint accepts requests with a wrong signature: verify "
                "`webhook-signature` with any Standard Webhooks library",
            )
        return Verdict(
            False,
            "your endpoint accepts a request signed 10 minutes ago: refuse a "
            "`webhook-timestamp` over 5 minutes old (Standard Webhooks libraries do), or a "
            "captured request can be replayed",
        )
    refused = "a wrong signature" if probe == "wrong_signature" else "a stale timestamp"
    if 400 <= status < 500:
        return Verdict(True, f"refuses {refused}")
    return Verdict(
        True,
        f"refuses {refused}, but with {status}: answer 400 or 401 instead, since "
        "senders retry a 5xx that can never succeed",
    )


@dataclass(frozen=True)
class ProbeResult:
    """One probe: what was sent, what the receiver answered, and whether that is right."""

    probe: str
    webhook_id: str
    outcome: DeliveryOutcome | None
    verdict: Verdict

    @property
    def is_passed(self) -> bool:
        """True when the receiver answered this probe as it should."""
        return self.verdict.is_passed

    @property
    def expected(self) -> str:
        """The answer a receiver should give: ``2xx``, or ``4xx`` to a forged probe."""
        return "4xx" if self.probe in _FORGED else "2xx"

    @property
    def answer(self) -> str:
        """What the receiver answered, in a word: its status, an error kind, or not sent."""
        if self.outcome is None:
            return "not sent"
        if self.outcome.status is None:
            return self.outcome.error_kind or "no answer"
        return str(self.outcome.status)

    def to_json(self) -> dict[str, Any]:
        """One element of ``probes`` in `endpoint check --json`."""
        outcome = self.outcome
        return {
            "probe": self.probe,
            "description": PROBES[self.probe],
            "webhook_id": self.webhook_id,
            "expected": self.expected,
            "sent": outcome is not None,
            "response_status": outcome.status if outcome else None,
            "error_kind": outcome.error_kind if outcome else None,
            "error_message": outcome.error_message if outcome else None,
            "duration_ms": (round(outcome.duration.total_seconds() * 1000) if outcome else None),
            "passed": self.is_passed,
            "hint": self.verdict.hint,
        }


@dataclass(frozen=True)
class ReceiverCheck:
    """The four probes of one endpoint."""

    endpoint_id: str
    url: str
    mode: str
    probes: tuple[ProbeResult, ...]

    @property
    def is_passed(self) -> bool:
        """True when every probe was answered as it should be."""
        return all(p.is_passed for p in self.probes)

    def to_json(self) -> dict[str, Any]:
        """The `endpoint check --json` shape."""
        return {
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "mode": self.mode,
            "passed": self.is_passed,
            "probes": [p.to_json() for p in self.probes],
        }


def check_endpoint(
    engine: Engine,
    settings: Settings,
    endpoint: Endpoint,
    *,
    sender: HttpSender | None = None,
) -> ReceiverCheck:
    """Probe ``endpoint``'s receiver with the four requests of the module docstring.

    Disabled endpoints are probed too (checking before enabling is a use). Takes up to four
    times ``settings.timeout``; stops after the first probe if that got no answer at all.

    Args:
        engine: the database, only read for the endpoint's signing secrets.
        settings: the deadline, SSRF allow-list and plain-HTTP rule.
        endpoint: the endpoint to probe.
        sender: the sender to use; by default one is made for the check and closed after.
    """
    with engine.connect() as conn:
        secrets = signing_secrets(conn, settings, endpoint.id, clock.now())
    own_sender = sender is None
    http = sender or HttpSender(
        timeout=settings.timeout, allowed_networks=settings.allowed_networks, max_connections=1
    )
    try:
        probes = _run_probes(http, settings, endpoint, secrets)
    finally:
        if own_sender:
            http.close()
    check = ReceiverCheck(
        endpoint_id=endpoint.id, url=endpoint.url, mode=endpoint.mode, probes=probes
    )
    log.info(
        "endpoint.checked",
        extra={
            "endpoint_id": endpoint.id,
            "passed": check.is_passed,
            "failed_probes": [p.probe for p in probes if not p.is_passed],
        },
    )
    return check


def _run_probes(
    sender: HttpSender, settings: Settings, endpoint: Endpoint, secrets: list[str]
) -> tuple[ProbeResult, ...]:
    valid = _probe_body(endpoint, "valid")
    wrong = _probe_body(endpoint, "wrong_signature")
    stale = _probe_body(endpoint, "stale_timestamp")
    # Probe name, (id, body), signing secrets, age of the timestamp.
    plan = (
        ("valid", valid, secrets, timedelta(0)),
        ("wrong_signature", wrong, [generate_secret()], timedelta(0)),
        ("stale_timestamp", stale, secrets, STALE_BY),
        ("duplicate_id", valid, secrets, timedelta(0)),
    )
    results: list[ProbeResult] = []
    is_reachable = True
    for probe, (msg_id, body), signing, age in plan:
        outcome = None
        if is_reachable:
            outcome = _send(sender, settings, endpoint.url, msg_id, body, signing, age)
            if probe == "valid":
                # No answer at all (DNS, connect, blocked, timeout) to the first probe would
                # be no answer three more times, each costing up to the deadline: say it once.
                is_reachable = outcome.status is not None
        results.append(ProbeResult(probe, msg_id, outcome, judge_probe(probe, outcome)))
    return tuple(results)


def _send(
    sender: HttpSender,
    settings: Settings,
    url: str,
    msg_id: str,
    body: bytes,
    secrets: list[str],
    age: timedelta,
) -> DeliveryOutcome:
    timestamp = int((clock.now() - age).timestamp())
    headers = webhook_headers(
        msg_id=msg_id,
        timestamp=timestamp,
        signature=signature_header(secrets, msg_id=msg_id, timestamp=timestamp, body=body),
    )
    return refuse_plain_http(url, settings) or sender.send(url, headers, body)


def _probe_body(endpoint: Endpoint, probe: str) -> tuple[str, bytes]:
    """A new event id and the envelope of a probe in the endpoint's mode, built as events are."""
    event_id = new_id("evt")
    envelope = build_envelope(
        event_id=event_id,
        event_type=CHECK_EVENT_TYPE,
        project_id=endpoint.project_id,
        data={"endpoint_id": endpoint.id, "probe": probe},
        created_at=rfc3339(_whole_seconds(clock.now())) or "",
        mode=validate_mode(endpoint.mode),
    )
    return event_id, envelope.encode("utf-8")


def _whole_seconds(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)
