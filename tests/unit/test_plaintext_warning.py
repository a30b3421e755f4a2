"""Sealing decisions that need no services: who warns about plain text, and what reseal does."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from webhooks.errors import ConfigurationError
from webhooks.sealing import plaintext_warning, reseal, seal, unseal
from workers.flower import read_config

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def test_plain_text_is_warned_about_except_in_dev_or_with_a_key() -> None:
    warning = plaintext_warning((), is_dev=False)
    assert warning and "WEBHOOKS_SECRET_KEY is not set" in warning
    assert "webhooks secrets reseal" in warning
    assert plaintext_warning((), is_dev=True) is None
    assert plaintext_warning((KEY_A,), is_dev=False) is None


def test_flower_warns_too_unless_started_by_webhooks_dev() -> None:
    production = {"FLOWER_BASIC_AUTH": "ops:s3cret-pw"}
    assert read_config(production).warning == plaintext_warning((), is_dev=False)
    assert read_config({**production, "WEBHOOKS_SECRET_KEY": KEY_A}).warning is None
    assert read_config({"WEBHOOKS_DEV": "true"}).warning is None


def test_reseal_seals_plain_text_and_moves_old_seals_to_the_first_key() -> None:
    from_plain = reseal("whsec_abc", (KEY_B, KEY_A))
    moved = reseal(seal("whsec_abc", (KEY_A,)), (KEY_B, KEY_A))
    for value in (from_plain, moved):
        assert unseal(value, (KEY_B,)) == "whsec_abc"
    with pytest.raises(ConfigurationError, match="list the key"):
        reseal(seal("whsec_abc", (KEY_A,)), (KEY_B,))
    with pytest.raises(ConfigurationError, match="not set"):
        reseal("whsec_abc", ())
