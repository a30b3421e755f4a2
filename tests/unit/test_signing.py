"""Signatures must verify with the libraries customers actually use."""

from __future__ import annotations

import json
import time

import pytest
import standardwebhooks
import svix.webhooks

from webhooks.errors import InvalidArgument
from webhooks.signing import generate_secret, secret_key, sign, signature_header

BODY = json.dumps(
    {"id": "evt_1", "type": "deployment.succeeded", "data": {"ü": 1}},
    separators=(",", ":"),
    ensure_ascii=False,
).encode()


def headers(secrets: list[str], *, msg_id: str = "evt_1") -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            secrets, msg_id=msg_id, timestamp=timestamp, body=BODY
        ),
    }


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = generate_secret()
    payload = standardwebhooks.Webhook(secret).verify(BODY, headers([secret]))
    assert payload["type"] == "deployment.succeeded"


def test_signature_verifies_with_svix() -> None:
    secret = generate_secret()
    h = headers([secret])
    # svix 2.x returns None on success and raises on a bad signature; check both names.
    svix.webhooks.Webhook(secret).verify(BODY, h)
    svix.webhooks.Webhook(secret).verify(
        BODY, {k.replace("webhook-", "svix-"): v for k, v in h.items()}
    )
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(generate_secret()).verify(BODY, h)


def test_during_a_rotation_both_secrets_verify() -> None:
    old, new = generate_secret(), generate_secret()
    h = headers([new, old])
    assert len(h["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(BODY, h)


def test_a_wrong_secret_or_a_changed_body_does_not_verify() -> None:
    secret = generate_secret()
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(BODY, headers([secret]))
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY + b" ", headers([secret]))


def test_known_vector_from_the_standard_webhooks_spec() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_secrets_are_whsec_base64_of_enough_random_bytes() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert 24 <= len(secret_key(secret)) <= 64
    assert generate_secret() != secret
    with pytest.raises(InvalidArgument):
        secret_key("not-a-secret")
