"""The API's JSON answers (`webhooks.api._handling.respond`): orjson writes them, and they must
be the bytes the standard library wrote, for whatever a customer's payload holds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhooks.api._handling import respond


def standard(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "body",
    [
        {"data": [{"id": "att_1", "response_body": 'é "quoted" \u2028 \\ \n', "n": None}]},
        {"count": 2, "ratio": 0.5, "flag": True, "nested": {"list": [1, "two", 3.25]}},
        {"payload": {"big": 2**70, "negative": -(2**65)}},  # beyond what orjson takes
        {"1": "a numeric-looking key", "": "an empty key"},
    ],
)
def test_an_answer_is_the_standard_librarys_json(body: Any) -> None:
    answer = respond(body, 201, {"X-Extra": "1"})
    assert answer.body == standard(body)
    assert json.loads(answer.body) == body
    assert (answer.status_code, answer.headers["x-extra"]) == (201, "1")
    assert answer.headers["content-type"] == "application/json"
