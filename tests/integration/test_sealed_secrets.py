"""With WEBHOOKS_SECRET_KEY set, secrets are stored sealed and deliveries still verify."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import standardwebhooks
from cryptography.fernet import Fernet
from sqlalchemy.engine import Engine

from tests.support.deliveries import new_endpoint, publish_one, wait_for_state
from tests.support.receivers import Receiver
from webhooks.errors import ConfigurationError
from webhooks.sealing import seal, unseal
from webhooks.settings import Settings

pytestmark = pytest.mark.usefixtures("stack")

KEY = Fernet.generate_key().decode()
STACK_ENV = {"WEBHOOKS_SECRET_KEY": KEY}


def stored_secrets(engine: Engine, settings: Settings, endpoint_id: str) -> list[str]:
    with engine.connect() as conn:
        value = conn.execute(
            sa.text(f'SELECT secrets FROM "{settings.db_schema}".endpoints WHERE id = :id'),
            {"id": endpoint_id},
        ).scalar_one()
    return [item["secret"] for item in value]


def test_secrets_are_sealed_at_rest_and_deliveries_still_verify(
    engine: Engine, settings: Settings, receiver: Receiver, project: str, path: str
) -> None:
    endpoint_id, secret = new_endpoint(engine, settings, receiver.url(path), project)
    [stored] = stored_secrets(engine, settings, endpoint_id)
    assert stored.startswith("fernet:")
    assert secret.removeprefix("whsec_") not in stored
    assert unseal(stored, (KEY,)) == secret

    event_id = publish_one(engine, settings, project)
    wait_for_state(engine, settings, event_id, "succeeded")
    [request] = receiver.received(path)
    standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def test_key_rotation_unseals_with_the_old_key_listed_second() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = seal("whsec_abc", (old,))
    assert unseal(sealed, (new, old)) == "whsec_abc"
    with pytest.raises(ConfigurationError, match="cannot be decrypted"):
        unseal(sealed, (new,))
    with pytest.raises(ConfigurationError, match="not set"):
        unseal(sealed, ())
    assert unseal("whsec_plain", (new,)) == "whsec_plain"


def test_a_malformed_key_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(ConfigurationError, match=r"Fernet\.generate_key"):
        Settings.from_env({"WEBHOOKS_SECRET_KEY": "not-a-key"})
    assert KEY not in repr(Settings.from_env({"WEBHOOKS_SECRET_KEY": KEY}))
