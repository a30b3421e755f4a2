"""`judge_probe`: the one place that decides whether a receiver answered a probe rightly."""

from __future__ import annotations

from datetime import timedelta

import pytest

from webhooks.delivery import DeliveryOutcome
from webhooks.receiver_check import judge_probe


def answered(status: int, error_kind: str | None = None) -> DeliveryOutcome:
    if error_kind is None and not 200 <= status < 300:
        error_kind = "redirect" if 300 <= status < 400 else "http_status"
    return DeliveryOutcome(
        status=status, error_kind=error_kind, error_message=None, duration=timedelta(0)
    )


def unanswered(kind: str, message: str) -> DeliveryOutcome:
    return DeliveryOutcome(
        status=None, error_kind=kind, error_message=message, duration=timedelta(seconds=10)
    )


@pytest.mark.parametrize("probe", ["valid", "duplicate_id"])
@pytest.mark.parametrize("status", [200, 202, 204])
def test_a_2xx_passes_the_valid_and_the_repeated_probe(probe: str, status: int) -> None:
    assert judge_probe(probe, answered(status)).is_passed


@pytest.mark.parametrize("probe", ["wrong_signature", "stale_timestamp"])
@pytest.mark.parametrize("status", [400, 401, 403, 422])
def test_a_4xx_passes_a_forged_probe_without_advice(probe: str, status: int) -> None:
    verdict = judge_probe(probe, answered(status))
    assert verdict.is_passed and verdict.hint.startswith("refuses")
    assert "instead" not in verdict.hint


@pytest.mark.parametrize("probe", ["wrong_signature", "stale_timestamp"])
@pytest.mark.parametrize("status", [500, 503, 302])
def test_other_refusals_of_a_forged_probe_pass_with_a_hint_to_answer_4xx(
    probe: str, status: int
) -> None:
    verdict = judge_probe(probe, answered(status))
    assert verdict.is_passed
    assert f"but with {status}: answer 400 or 401 instead" in verdict.hint


def test_accepting_a_wrong_signature_fails_and_says_to_verify_it() -> None:
    verdict = judge_probe("wrong_signature", answered(200))
    assert not verdict.is_passed
    assert "verify `webhook-signature` with any Standard Webhooks library" in verdict.hint


def test_accepting_a_stale_timestamp_fails_and_says_to_check_its_age() -> None:
    verdict = judge_probe("stale_timestamp", answered(204))
    assert not verdict.is_passed
    assert "`webhook-timestamp` over 5 minutes old" in verdict.hint


def test_a_2xx_that_arrives_too_late_to_a_forged_probe_still_counts_as_accepted() -> None:
    assert not judge_probe("wrong_signature", answered(200, "timeout")).is_passed


def test_a_2xx_that_did_not_finish_in_time_fails_the_valid_probe() -> None:
    verdict = judge_probe("valid", answered(200, "timeout"))
    assert not verdict.is_passed and "within 10 s" in verdict.hint


def test_refusing_a_repeated_id_fails_and_explains_retries_reuse_it() -> None:
    verdict = judge_probe("duplicate_id", answered(409))
    assert not verdict.is_passed and "retries and replays reuse the id" in verdict.hint


def test_refusing_a_valid_event_with_401_points_at_the_secret_and_the_raw_body() -> None:
    verdict = judge_probe("valid", answered(401))
    assert not verdict.is_passed and "current secret over the raw body" in verdict.hint


@pytest.mark.parametrize("probe", ["valid", "wrong_signature", "stale_timestamp", "duplicate_id"])
def test_no_answer_fails_every_probe_with_the_reason_on_one_line(probe: str) -> None:
    verdict = judge_probe(probe, unanswered("dns", "hooks.example.com could not\nbe resolved"))
    assert not verdict.is_passed
    assert verdict.hint == "no answer (dns): hooks.example.com could not be resolved"


def test_a_probe_not_sent_fails() -> None:
    verdict = judge_probe("duplicate_id", None)
    assert not verdict.is_passed and verdict.hint.startswith("not sent")
